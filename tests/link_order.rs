//! `link/ordered-cc`, the linker cargo uses here: the sensorhub's code order must reach the linker
//! under the names this build has, never place what the order does not name, and never cost a
//! link that would otherwise succeed. Needs `cc` and `nm`, as any Linux build of the workspace.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn wrapper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("link/ordered-cc")
}

/// An object defining functions under exactly these symbol names.
fn object(dir: &Path, names: &[&str]) -> PathBuf {
    let mut c = String::new();
    for (i, name) in names.iter().enumerate() {
        c.push_str(&format!("void f{i}(void) __asm__(\"{name}\");\nvoid f{i}(void) {{}}\n"));
    }
    let src = dir.join("fns.c");
    std::fs::write(&src, c).unwrap();
    let obj = dir.join("fns.o");
    let st =
        Command::new("cc").args(["-c", "-ffunction-sections", "-o"]).arg(&obj).arg(&src).status().unwrap();
    assert!(st.success(), "cc could not compile the test object");
    obj
}

/// Runs the wrapper with a stand-in for `cc` that keeps the order file it was given and exits
/// with `exit`; returns the wrapper's exit code, the order the stand-in saw and its arguments.
fn link(dir: &Path, args: &[String], exit: i32) -> (i32, Option<String>, String) {
    let fake = dir.join("fake-cc");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{d}/args'\nfor a; do case $a in -Wl,--symbol-ordering-file=*) \
             cat \"${{a#*=}}\" > '{d}/seen';; esac; done\nexit {exit}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(dir.join("seen"));
    let st = Command::new(wrapper()).args(args).env("OUTPOST_LINK_CC", &fake).status().unwrap();
    let seen = std::fs::read_to_string(dir.join("seen")).ok();
    (st.code().unwrap_or(-1), seen, std::fs::read_to_string(dir.join("args")).unwrap())
}

fn order_arg(order: &Path) -> String {
    format!("-Wl,--symbol-ordering-file={}", order.display())
}

// One test, not two: a test that writes a script and runs it while another thread forks can find
// it "text file busy", the other child holding the script open until it execs.
#[test]
fn the_order_reaches_the_linker_under_this_builds_names_and_never_costs_a_link() {
    the_order_reaches_the_linker_under_this_builds_names_and_names_nothing_more();
    a_failing_link_fails_and_what_cannot_be_resolved_goes_through_as_it_was();
}

fn the_order_reaches_the_linker_under_this_builds_names_and_names_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let obj = object(
        dir.path(),
        &[
            // renamed by ThinLTO since the order was made
            "steady.llvm.111",
            // a crate hash changed (legacy and v0 mangling)
            "_ZN3abc3def17h0123456789abcdefE",
            "_RNvCsAAAA_5crate4func",
            // two copies of a generic function the order names one of: the hash alone tells
            // them apart, so neither may be taken on the order's word
            "_ZN3gen4copy17h1111111111111111E",
            "_ZN3gen4copy17h2222222222222222E",
            // not in the order
            "cold",
        ],
    );
    let order = dir.path().join("hub-code.order");
    std::fs::write(
        &order,
        "# made from another build\n_RNvCsBBBB_5crate4func\nsteady.llvm.999\n_ZN3gen4copy17h3333333333333333E\n\
         _ZN3abc3def17hffffffffffffffffE\ngone\n",
    )
    .unwrap();
    let args = vec![obj.display().to_string(), order_arg(&order), "-o".into(), "out".into()];
    let (code, seen, passed) = link(dir.path(), &args, 0);
    assert_eq!(code, 0);
    assert_eq!(
        seen.as_deref(),
        Some("_RNvCsAAAA_5crate4func\nsteady.llvm.111\n_ZN3abc3def17h0123456789abcdefE\n"),
        "the order, in its order, under this build's names"
    );
    // Every other argument reaches the compiler driver unchanged and in place.
    let passed: Vec<&str> = passed.lines().collect();
    assert_eq!(passed[0], obj.display().to_string());
    assert!(passed[1].starts_with("-Wl,--symbol-ordering-file=") && passed[1] != order_arg(&order));
    assert_eq!(&passed[2..], ["-o", "out"]);
}

fn a_failing_link_fails_and_what_cannot_be_resolved_goes_through_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("hub-code.order");
    std::fs::write(&order, "steady\n").unwrap();
    let obj = object(dir.path(), &["steady"]);

    // The compiler driver's verdict is the wrapper's.
    let args = vec![obj.display().to_string(), order_arg(&order)];
    assert_eq!(link(dir.path(), &args, 3).0, 3);

    // No object to resolve against: the order goes to the linker as written.
    let args = vec!["missing.o".to_string(), order_arg(&order)];
    let (code, seen, passed) = link(dir.path(), &args, 0);
    assert_eq!((code, seen.as_deref()), (0, Some("steady\n")));
    assert_eq!(passed, format!("missing.o\n{}\n", order_arg(&order)));

    // No order: the arguments pass untouched.
    let args = vec![obj.display().to_string(), "-o".into(), "out".into()];
    let (code, seen, passed) = link(dir.path(), &args, 0);
    assert_eq!((code, seen), (0, None));
    assert_eq!(passed, format!("{}\n-o\nout\n", obj.display()));
}
