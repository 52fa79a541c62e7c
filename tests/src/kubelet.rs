//! A pod spec run as a kubelet runs it, in a network namespace (root only).
//!
//! What is emulated is what makes an injected spec runnable or not:
//! - init containers run to completion in order, as root unless their securityContext says
//!   otherwise; an init container with `restartPolicy: Always` is a native sidecar, started
//!   and left running, and the next container starts once its startup probe passes; a
//!   container's `postStart` exec hook runs to its end before the next container starts; a
//!   container's `postStart` exec hook runs to its end before the next container starts;
//! - each container runs its own `command` and `args` (an image's binary is the test build
//!   of the same name), as its securityContext's UID and GID, with exactly the environment
//!   its spec names, downward-API values filled in;
//! - volume mounts land at their paths in a mount namespace of the container's own (over a
//!   tmpfs on `/run`, so that nothing is written to the host's), and the root filesystem is
//!   remounted read-only there when the securityContext asks (the host's other mounts, such
//!   as its own `/run`, stay as they are);
//! - probes are sent from a "node" namespace to the pod's address, as the kubelet's are;
//!   httpGet passes with a status from 200 to 399.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{Netns, NsChild};
use crate::paths::bin_path;

/// What the API server and the kubelet know of a pod besides its spec.
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub ip: String,
}

pub struct Kubelet<'a> {
    /// Where probes come from.
    pub node: &'a Netns,
    /// The binary `weft-testbed`, which the test's app images run.
    pub testbed: PathBuf,
    /// Where logs go.
    pub dir: PathBuf,
}

/// A running pod: its containers' processes by name, killed on drop.
pub struct RunningPod {
    pub containers: BTreeMap<String, NsChild>,
}

impl Kubelet<'_> {
    /// Runs the pod `spec` (a pod template's `spec`) in `ns`, with `volumes` naming a host
    /// directory for each of its volumes, until every container is started and every
    /// readiness probe passes.
    pub fn run_pod(
        &self,
        ns: &Netns,
        meta: &PodMeta,
        spec: &Value,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> RunningPod {
        let mut running = RunningPod {
            containers: BTreeMap::new(),
        };
        let list = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
        for container in list("initContainers") {
            let name = container["name"].as_str().unwrap().to_owned();
            let mut cmd = self.command(ns, meta, spec, &container, volumes);
            if container["restartPolicy"] == "Always" {
                let child = ns.spawn(
                    &mut cmd,
                    &self.dir.join(format!("{}-{name}.log", meta.name)),
                );
                running.containers.insert(name.clone(), child);
                if let Some(probe) = container.get("startupProbe") {
                    self.wait_probe(meta, &name, probe, &running);
                }
            } else {
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "init container {name} of {} failed: {}{}",
                    meta.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for container in list("containers") {
            let name = container["name"].as_str().unwrap().to_owned();
            let mut cmd = self.command(ns, meta, spec, &container, volumes);
            let child = ns.spawn(
                &mut cmd,
                &self.dir.join(format!("{}-{name}.log", meta.name)),
            );
            running.containers.insert(name.clone(), child);
            // The next container starts only once this one's postStart hook has returned.
            if let Some(hook) = container.pointer("/lifecycle/postStart/exec/command") {
                let mut exec = container.clone();
                exec["command"] = hook.clone();
                exec["args"] = Value::Null;
                let out = self
                    .command(ns, meta, spec, &exec, volumes)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "the postStart hook of {name} in {} failed: {}",
                    meta.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for container in list("containers").iter().chain(&list("initContainers")) {
            for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if let Some(probe) = container.get(kind) {
                    let name = container["name"].as_str().unwrap();
                    self.wait_probe(meta, &format!("{name} {kind}"), probe, &running);
                }
            }
        }
        running
    }

    /// One probe, once, from the node: `Ok` if it passes.
    pub fn probe(&self, meta: &PodMeta, probe: &Value) -> Result<(), String> {
        if let Some(get) = probe.get("httpGet") {
            let port = get["port"]
                .as_u64()
                .ok_or("the emulation probes numbered ports only")?;
            let path = get["path"].as_str().unwrap_or("/");
            let url = format!("http://{}:{port}{path}", meta.ip);
            let out = self
                .node
                .command(self.testbed.to_str().unwrap())
                .args(["get", &url])
                .output()
                .map_err(|e| e.to_string())?;
            let answer: Value = serde_json::from_slice(&out.stdout)
                .map_err(|_| String::from_utf8_lossy(&out.stderr).into_owned())?;
            let status = answer["status"].as_u64().unwrap_or(0);
            return if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("GET {url}: {status} {}", answer["body"]))
            };
        }
        if let Some(tcp) = probe.get("tcpSocket") {
            let port = tcp["port"].as_u64().ok_or("numbered ports only")?;
            let out = self
                .node
                .command(self.testbed.to_str().unwrap())
                .args(["tcp", &format!("{}:{port}", meta.ip)])
                .output()
                .map_err(|e| e.to_string())?;
            return out
                .status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Err(format!(
            "the emulation sends httpGet and tcpSocket probes only: {probe}"
        ))
    }

    fn wait_probe(&self, meta: &PodMeta, what: &str, probe: &Value, running: &RunningPod) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.probe(meta, probe) {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: Vec<String> = running
            .containers
            .iter()
            .map(|(name, c)| format!("--- {name} ---\n{}", c.log()))
            .collect();
        panic!(
            "{} {what} never passed: {last}\n{}",
            meta.name,
            logs.join("\n")
        );
    }

    /// The container's process: its user, its environment, its mounts, its command.
    fn command(
        &self,
        ns: &Netns,
        meta: &PodMeta,
        spec: &Value,
        container: &Value,
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Command {
        let security = &container["securityContext"];
        let uid = security["runAsUser"].as_u64().unwrap_or(0);
        let gid = security["runAsGroup"].as_u64().unwrap_or(uid);
        let mounts = container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut setup = String::from("set -e; ");
        if !mounts.is_empty() {
            setup.push_str("mount -t tmpfs tmpfs /run; ");
        }
        for mount in &mounts {
            let name = mount["name"].as_str().unwrap();
            let path = mount["mountPath"].as_str().unwrap();
            let path = path.strip_prefix("/var").unwrap_or(path);
            assert!(
                path.starts_with("/run/"),
                "the emulation mounts under /run only: {path}"
            );
            let source = volumes
                .get(name)
                .unwrap_or_else(|| panic!("no host directory for volume {name}"));
            setup.push_str(&format!(
                "mkdir -p '{path}'; mount --bind '{}' '{path}'; ",
                source.display()
            ));
        }
        if security["readOnlyRootFilesystem"] == true {
            setup.push_str("mount -o remount,bind,ro /; ");
        }
        setup.push_str("exec \"$@\"");

        let mut cmd = ns.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &setup,
            "sh",
        ]);
        let id = uid.to_string();
        let group = gid.to_string();
        cmd.args([
            "setpriv",
            "--reuid",
            &id,
            "--regid",
            &group,
            "--clear-groups",
        ]);
        cmd.args(["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        for env in container["env"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap();
            let value = match (&env["value"], env.pointer("/valueFrom/fieldRef/fieldPath")) {
                (Value::String(v), _) => v.clone(),
                (_, Some(Value::String(field))) => downward(meta, spec, field),
                _ => panic!("env {name}: only values and fieldRefs are emulated"),
            };
            cmd.arg(format!("{name}={value}"));
        }
        let command: Vec<&str> = container["command"]
            .as_array()
            .expect("the emulation runs containers with a command")
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        cmd.arg(self.binary(command[0]));
        cmd.args(&command[1..]);
        for arg in container["args"].as_array().into_iter().flatten() {
            cmd.arg(arg.as_str().unwrap());
        }
        cmd
    }

    /// The test build of an image's binary, by its name.
    fn binary(&self, path: &str) -> PathBuf {
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        match name {
            "weft-testbed" => self.testbed.clone(),
            other => bin_path(other),
        }
    }
}

/// A downward-API field of the pod.
fn downward(meta: &PodMeta, spec: &Value, field: &str) -> String {
    match field {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "status.podIP" => meta.ip.clone(),
        "spec.serviceAccountName" => spec["serviceAccountName"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        other => panic!("the downward-API field {other} is not emulated"),
    }
}

/// Runs a command in the pod as its app would (`kubectl exec`), and parses its JSON line.
pub fn exec_json(ns: &Netns, program: &Path, args: &[&str]) -> Result<Value, String> {
    let out = run_quiet(ns.command(program.to_str().unwrap()).args(args));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn run_quiet(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}
