//! Two things the linker needs that cargo cannot say on its own:
//!
//! - Windows: a message table (`src/messages.mc`: one message, `%1`) linked into outpost.exe, so
//!   Event Viewer shows the services' events as written. Built with MinGW's `windmc` and `windres`
//!   (binutils-mingw-w64), named by the target's architecture or by the `WINDMC` and `WINDRES`
//!   variables.
//! - x86_64 Linux release builds linked by LLD: the functions a running sensorhub keeps calling
//!   placed next to each other (`link/hub-code.order`, see `link/README.md`), so the 1.4 MB of
//!   code it uses stay resident instead of the many megabytes they would be spread over. The
//!   names are matched to this build's by `link/ordered-cc`, the linker cargo runs here.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/messages.mc");
    println!("cargo:rerun-if-env-changed=WINDMC");
    println!("cargo:rerun-if-env-changed=WINDRES");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=link/ordered-cc");
    println!("cargo:rerun-if-env-changed=OUTPOST_CODE_ORDER");
    if let Some(order) = code_order() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
        // Names the file lists that this build does not have (inlined here, or from another
        // toolchain) are skipped; the bench says how many were found.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    if env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu") {
        println!(
            "cargo:warning=no message table linked: only the MinGW (windows-gnu) build makes one; \
             Event Viewer shows the services' events with a \"description cannot be found\" note"
        );
        return;
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let tool = |var: &str, name: &str| env::var(var).unwrap_or_else(|_| format!("{arch}-w64-mingw32-{name}"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mc = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("src")
        .join("messages.mc");
    // windmc writes messages.rc and the table it names (MSG00409.bin) into OUT_DIR; windres, run
    // there, compiles both into a COFF object with the resource section.
    run(Command::new(tool("WINDMC", "windmc")).arg("-r").arg(&out).arg("-h").arg(&out).arg(&mc));
    run(Command::new(tool("WINDRES", "windres")).current_dir(&out).args([
        "-i",
        "messages.rc",
        "-o",
        "messages.o",
    ]));
    // An object, not a library: nothing refers to the resource, so the linker would leave it out
    // of an archive.
    println!("cargo:rustc-link-arg-bins={}", out.join("messages.o").display());
}

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{shown} failed ({s}): it builds outpost.exe's event message table"),
        Err(e) => panic!(
            "cannot run {shown}: {e}; install binutils-mingw-w64 (windmc, windres) or set WINDMC and WINDRES"
        ),
    }
}

const ORDER_FILE: &str = "link/hub-code.order";

/// The symbol order file, when this build links with LLD: rustc's own `rust-lld`, the default for
/// x86_64 Linux since Rust 1.90, unless the flags choose another linker. GNU ld would refuse the
/// option, so anything else (or `OUTPOST_CODE_ORDER=off`) links in the compiler's order. Release
/// builds only: a debug build's names never match and nobody measures its memory.
fn code_order() -> Option<PathBuf> {
    if env::var("OUTPOST_CODE_ORDER").as_deref() == Ok("off")
        || env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
    {
        return None;
    }
    // A linker chosen in cargo's config (RUSTC_LINKER) or in the flags may not be LLD. The
    // workspace's own (.cargo/config.toml) is `cc` behind link/ordered-cc, which resolves the
    // order's names against this build's.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = env::var_os("RUSTC_LINKER")
        .is_none_or(|l| PathBuf::from(l).file_name() == Some("ordered-cc".as_ref()));
    if !own_linker || ["linker", "link-self-contained", "fuse-ld"].iter().any(|f| flags.contains(f)) {
        return None;
    }
    let rustc = env::var_os("RUSTC")?;
    let version = Command::new(&rustc).arg("-vV").output().ok()?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let release = version.lines().find_map(|l| l.strip_prefix("release: "))?;
    let minor: u32 = release.split('.').nth(1)?.parse().ok()?;
    if !release.starts_with("1.") || minor < 90 {
        return None;
    }
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    // Distributions that build rustc themselves often leave the bundled LLD out and link with cc.
    if !sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld").exists() {
        return None;
    }
    let order = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR")?).join(ORDER_FILE);
    order.exists().then_some(order)
}
