//! Where the harness finds the binaries under test and the tools it drives, and the scratch
//! directories it gives each process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs the `weft` CLI with `stdin` on its standard input, to its end.
pub fn weft_cli(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(bin_path("weft"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning weft");
    let mut input = child.stdin.take().expect("weft's stdin");
    // A command that fails early may not read it all; its output says why.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("weft's output")
}

/// Where cargo put the workspace's binaries: next to the test executable's `deps/` folder.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`make test` does; or `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// A scratch directory readable by every user (proxies in namespaces run as UID 2102).
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "weft-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Whether `name` is a command on the PATH.
pub fn has_command(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
