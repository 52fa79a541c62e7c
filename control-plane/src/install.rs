//! `weft install`: the install manifests of `manifests/install/`, compiled into the binary so
//! that the printed set always matches the version that runs, in the kustomization's order.

use crate::inject::pod::DEFAULT_IMAGE;

/// The files of `manifests/install/`, in `kustomization.yaml`'s order.
pub const FILES: [(&str, &str); 5] = [
    (
        "namespace.yaml",
        include_str!("../../manifests/install/namespace.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../manifests/install/rbac.yaml"),
    ),
    (
        "trust-anchor.yaml",
        include_str!("../../manifests/install/trust-anchor.yaml"),
    ),
    (
        "control-plane.yaml",
        include_str!("../../manifests/install/control-plane.yaml"),
    ),
    (
        "webhook.yaml",
        include_str!("../../manifests/install/webhook.yaml"),
    ),
];

/// The install set as one YAML stream, with `image` for the control plane and the proxies
/// it injects.
pub fn rendered(image: &str) -> String {
    let docs: Vec<String> = FILES
        .iter()
        .map(|(_, text)| text.replace(DEFAULT_IMAGE, image))
        .collect();
    docs.join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kustomization_lists_the_files_weft_install_prints() {
        let kustomization: serde_json::Value =
            serde_saphyr::from_str(include_str!("../../manifests/install/kustomization.yaml"))
                .unwrap();
        let listed: Vec<&str> = kustomization["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        let printed: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(listed, printed);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/install");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "kustomization.yaml")
            .collect();
        on_disk.sort();
        let mut printed: Vec<String> = printed.iter().map(|s| s.to_string()).collect();
        printed.sort();
        assert_eq!(
            on_disk, printed,
            "every file of manifests/install/ is installed"
        );
        // The shipped image is the one this version injects.
        assert!(FILES[3].1.contains(DEFAULT_IMAGE));
        let custom = rendered("registry.example/weft:1");
        assert!(!custom.contains(DEFAULT_IMAGE));
        assert_eq!(custom.matches("registry.example/weft:1").count(), 2);
    }
}
