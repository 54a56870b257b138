//! Windows only: links a message table (`src/messages.mc`: one message, `%1`) into outpost.exe, so
//! Event Viewer shows the services' events as written. Built with MinGW's `windmc` and `windres`
//! (binutils-mingw-w64), named by the target's architecture or by the `WINDMC` and `WINDRES`
//! variables. Other targets build nothing here.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/messages.mc");
    println!("cargo:rerun-if-env-changed=WINDMC");
    println!("cargo:rerun-if-env-changed=WINDRES");
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
