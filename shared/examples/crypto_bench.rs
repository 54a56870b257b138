//! Timings of the key primitives, for BENCHMARKS.md:
//! `cargo run --release -p outpost-shared --example crypto_bench [ITERATIONS]`
//!
//! Prints the median and mean time of each operation over ITERATIONS runs (default 50; key
//! generation runs 3 times, it is slow and its time varies a lot with the primes found).

use outpost_shared::keys::{
    seal, sign_request, unseal, verify_request, CommandEnvelope, KeyPair, Signed, DEFAULT_MAX_SKEW,
};
use std::time::{Duration, Instant};

fn measure(name: &str, runs: usize, mut op: impl FnMut()) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
    times.sort();
    let mean = times.iter().sum::<Duration>() / runs as u32;
    println!(
        "{name:<28} median {:>9.3} ms   mean {:>9.3} ms   ({runs} runs)",
        times[runs / 2].as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50).max(1);
    println!("RSA-3072, RSA-PSS/SHA-256, RSA-OAEP/SHA-256 + AES-256-GCM");

    let mut key = None;
    measure("generate key pair", 3, || key = Some(KeyPair::generate().expect("key generation")));
    let key = key.expect("generated");
    let cloud = KeyPair::generate().expect("key generation");

    let body = vec![b'x'; 64 * 1024];
    let now = chrono::Utc::now();
    let headers = sign_request(&key, "POST", "/v1/batches", &body, now).unwrap();
    measure("sign request (64 KiB body)", runs, || {
        sign_request(&key, "POST", "/v1/batches", &body, now).unwrap();
    });
    measure("verify request (64 KiB)", runs, || {
        verify_request(key.public(), &headers, "POST", "/v1/batches", &body, now, DEFAULT_MAX_SKEW).unwrap();
    });

    let command = CommandEnvelope::new(
        key.machine_id().clone(),
        "relay.set",
        serde_json::json!({"card": 1, "relay": 3, "on": true}),
        now,
        Duration::from_secs(60),
    )
    .unwrap();
    let signed = Signed::sign(&cloud, &command).unwrap();
    measure("sign command envelope", runs, || {
        Signed::sign(&cloud, &command).unwrap();
    });
    measure("verify command envelope", runs, || {
        signed.verify(cloud.public()).unwrap();
    });

    let sealed = seal(key.public(), "sensor-password-123").unwrap();
    measure("seal secret", runs, || {
        seal(key.public(), "sensor-password-123").unwrap();
    });
    measure("unseal secret", runs, || {
        unseal(&key, &sealed).unwrap();
    });
}
