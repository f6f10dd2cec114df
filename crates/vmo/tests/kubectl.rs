//! kubectl, the outside client VM administrators already use, against a live `vmo up`: apply, get
//! (table, JSON path, watch-free), and delete of a VirtualMachine from the repository's example;
//! storage classes, a DataVolume and its claim, and a claim kubectl sends with a bad size.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmo_testkit::{run_with_input, KeptDir, VmoProcess};

fn runs(p: &Path) -> bool {
    Command::new(p)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Every kubectl to test with: the one on PATH, and `VMO_EXTRA_KUBECTL` (the test script unpacks
/// Debian's kubernetes-client there, an older kubectl that still uses OpenAPI v2).
fn kubectls() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("kubectl"))
                .find(|p| runs(p))
        })
        .into_iter()
        .collect();
    if let Some(extra) = std::env::var_os("VMO_EXTRA_KUBECTL").map(PathBuf::from) {
        assert!(
            runs(&extra),
            "VMO_EXTRA_KUBECTL={} does not run",
            extra.display()
        );
        found.push(extra);
    }
    found
}

#[tokio::test]
async fn kubectl_applies_gets_and_deletes_a_virtual_machine() {
    let found = kubectls();
    if found.is_empty() {
        if std::env::var_os("VMO_REQUIRE_KUBECTL").is_some() {
            panic!("kubectl is required (VMO_REQUIRE_KUBECTL is set) but not on PATH");
        }
        eprintln!("SKIPPED: kubectl is not installed; the test script installs Debian's kubernetes-client");
        return;
    }
    for kubectl in found {
        round_trip(&kubectl).await;
    }
}

async fn round_trip(kubectl: &Path) {
    let version = Command::new(kubectl)
        .args(["version", "--client"])
        .output()
        .unwrap();
    eprintln!(
        "using {}: {}",
        kubectl.display(),
        String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let dir = KeptDir::new("vmo-kubectl-");
    let up = VmoProcess::start(
        Path::new(env!("CARGO_BIN_EXE_vmo")),
        &dir.path().join("data"),
    )
    .await;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vm-demo.yaml");
    let run =
        |args: &[&str], input: Option<&str>| run_with_input(kubectl, &up.kubeconfig, args, input);

    let (success, out, err) = run(&["apply", "-f", manifest.to_str().unwrap()], None);
    assert!(success, "kubectl apply: {out}{err}");
    assert!(
        out.contains("virtualmachine.kubevirt.io/demo created"),
        "{out}"
    );
    let (success, out, err) = run(&["get", "vms"], None);
    assert!(success, "{err}");
    assert!(
        out.lines().next().unwrap().starts_with("NAME") && out.contains("demo"),
        "{out}"
    );
    let (_, out, _) = run(
        &["get", "vm", "demo", "-o", "jsonpath={.spec.runStrategy}"],
        None,
    );
    assert_eq!(out, "Halted");
    // The object kubectl wrote is the one vmo reads.
    let vm = up
        .client()
        .get(
            &vmo_api::Registry::builtin().resolve("vm").copied().unwrap(),
            "default",
            "demo",
        )
        .await
        .unwrap();
    assert_eq!(vm.spec()["runStrategy"], "Halted");
    // A changed manifest is configured in place.
    let edited = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("runStrategy: Halted", "runStrategy: Manual");
    let (success, out, err) = run(&["apply", "-f", "-"], Some(&edited));
    assert!(success && out.contains("configured"), "{out}{err}");
    let (_, out, _) = run(
        &["get", "vm", "demo", "-o", "jsonpath={.spec.runStrategy}"],
        None,
    );
    assert_eq!(out, "Manual");
    // Validation errors reach kubectl as the server phrased them.
    let bad = edited.replace("guest: 256Mi", "guest: 12QB");
    let (success, _, err) = run(&["apply", "-f", "-"], Some(&bad));
    assert!(
        !success && err.contains("spec.template.spec.domain.memory.guest"),
        "{err}"
    );
    let (success, out, err) = run(&["delete", "vm", "demo"], None);
    assert!(success && out.contains("\"demo\" deleted"), "{out}{err}");
    let (success, _, err) = run(&["get", "vm", "demo"], None);
    assert!(!success && err.contains("NotFound"), "{err}");

    // Storage kinds as CDI and Kubernetes users write them: the built-in classes, a DataVolume
    // (which gets its claim), and a claim whose size is not a size.
    let (success, out, err) = run(&["get", "storageclass"], None);
    assert!(
        success && out.contains("local (default)") && out.contains("vmo.io/shared"),
        "{out}{err}"
    );
    let dv = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: blank\nspec:\n  source:\n    blank: {}\n  storage:\n    resources:\n      requests:\n        storage: 1Gi\n";
    let (success, out, err) = run(&["apply", "-f", "-"], Some(dv));
    assert!(
        success && out.contains("datavolume.cdi.kubevirt.io/blank created"),
        "{out}{err}"
    );
    // The controller makes the claim a moment later.
    let mode = vmo_testkit::wait_for(
        "the DataVolume's claim",
        std::time::Duration::from_secs(30),
        || async {
            let args = [
                "get",
                "pvc",
                "blank",
                "-o",
                "jsonpath={.spec.accessModes[0]}",
            ];
            let (success, out, _) = run(&args, None);
            (success && !out.is_empty()).then_some(out)
        },
    )
    .await;
    assert_eq!(
        mode, "ReadWriteOnce",
        "the claim takes the profile's access mode"
    );
    let pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: bad\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: lots\n";
    let (success, _, err) = run(&["apply", "-f", "-"], Some(pvc));
    assert!(
        !success && err.contains("spec.resources.requests[storage]"),
        "{err}"
    );
}
