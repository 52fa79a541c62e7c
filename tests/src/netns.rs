//! Network namespaces as pods, joined by a bridge that lives in a namespace of its own.
//! Nothing here touches the root namespace's interfaces, routes or iptables: every address,
//! route and rule is inside namespaces the test created, and they are deleted on drop.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::paths::has_command;

/// True when this test may use namespaces and iptables. Without root it skips loudly, unless
/// `WEFT_REQUIRE_ROOT_TESTS=1` (as in CI), where a skip is a failure.
pub fn root_tests_enabled(test: &str) -> bool {
    let required = std::env::var("WEFT_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = [
        (!is_root()).then_some("root"),
        (!has_command("ip")).then_some("ip (iproute2)"),
        (!has_command("iptables")).then_some("iptables"),
        (!has_command("setpriv")).then_some("setpriv (util-linux)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !required,
        "{test} needs {missing:?}; WEFT_REQUIRE_ROOT_TESTS=1 forbids skipping it"
    );
    eprintln!(
        "\n!!!!! SKIPPED {test}: it needs {missing:?}. Run as root with iptables to test interception. !!!!!\n"
    );
    false
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next() == Some("0"))
            })
        })
        .unwrap_or(false)
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "weft{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command run inside the namespace as another user, as a sidecar runs.
    pub fn command_as(&self, uid: u32, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        let id = uid.to_string();
        cmd.args([
            "netns",
            "exec",
            &self.name,
            "setpriv",
            "--reuid",
            &id,
            "--regid",
            &id,
            "--clear-groups",
            program,
        ]);
        cmd
    }

    /// Starts a long-running process in the namespace, killed on drop.
    pub fn spawn(&self, cmd: &mut Command, log: &std::path::Path) -> NsChild {
        let file = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        NsChild {
            child,
            log: log.to_owned(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A process in a namespace; `ip netns exec` and `setpriv` exec in place, so this is the
/// process itself.
pub struct NsChild {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl NsChild {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// Pods on one layer-2 segment: a bridge in its own namespace, a veth pair per pod.
pub struct Lan {
    bridge: Netns,
    pub pods: Vec<Netns>,
}

impl Lan {
    pub fn new() -> Lan {
        let bridge = Netns::new("br");
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        Lan {
            bridge,
            pods: Vec::new(),
        }
    }

    /// Adds a pod with `eth0` addressed `v4` (CIDR) and `v6` (CIDR), and routes for the
    /// virtual-IP ranges through `eth0`. Returns the pod's index.
    pub fn add_pod(&mut self, tag: &str, v4: &str, v6: &str) -> usize {
        let pod = Netns::new(tag);
        let peer = format!("vp{}", self.pods.len());
        run(Command::new("ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            &pod.name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.bridge.name,
        ]));
        self.bridge.ip(&["link", "set", &peer, "master", "br0"]);
        self.bridge.ip(&["link", "set", &peer, "up"]);
        pod.ip(&["addr", "add", v4, "dev", "eth0"]);
        pod.ip(&["-6", "addr", "add", v6, "dev", "eth0", "nodad"]);
        pod.ip(&["link", "set", "eth0", "up"]);
        // Service virtual IPs are routed out of eth0, as kube-proxy-less clusters do before
        // the sidecar's iptables rules redirect them.
        pod.ip(&["route", "add", "10.96.0.0/16", "dev", "eth0"]);
        pod.ip(&["-6", "route", "add", "fd00:96::/64", "dev", "eth0"]);
        self.pods.push(pod);
        self.pods.len() - 1
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Pods first; the bridge namespace goes when the fields drop.
        self.pods.clear();
    }
}
