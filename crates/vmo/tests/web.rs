//! The web UI through real headless Chromium against a real `vmo up` (with its agent and QEMU):
//! `web/tests/run.mjs` (playwright-core) signs in and runs every scenario in `web/tests/scenarios/`
//! (VM list, images and upload, the create wizard to a Running VM, serial and VNC consoles, the VM
//! detail with YAML errors and actions, nodes with drain, networks, storage, dashboard), failing on
//! any page reload or page error. Screenshots are kept in `target/web-artifacts/`. Skips, saying why, where Chromium,
//! node or the built UI are missing, unless `VMO_REQUIRE_WEB` is set (the test script sets it).

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmo_testkit::{test_guest, KeptDir, VmoProcess};

fn vmo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmo"))
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "{chromium} is not installed (apt install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed (scripts/build-web.sh installs it)".into());
    }
    if !web_dir().join("node_modules/playwright-core").exists()
        || !web_dir().join("dist/index.html").exists()
    {
        return Some("the web UI is not built (run scripts/build-web.sh, then build vmo)".into());
    }
    None
}

/// A screenshot of each main view, which the scenarios save.
const SCREENSHOTS: &[&str] = &[
    "signin.png",
    "vms.png",
    "vms-laptop.png",
    "images.png",
    "wizard.png",
    "wizard-review.png",
    "console.png",
    "vnc.png",
    "detail.png",
    "yaml-error.png",
    "nodes.png",
    "networks.png",
    "storage.png",
    "dashboard.png",
    "dashboard-dark.png",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_in_chromium() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("VMO_REQUIRE_WEB").is_none(),
            "VMO_REQUIRE_WEB is set but {why}"
        );
        eprintln!("SKIPPED: {why}");
        return;
    }
    let Some(guest) = test_guest() else { return };
    let dir = KeptDir::new("vmo-web-");
    let up = VmoProcess::start(vmo(), &dir.path().join("data")).await;
    let fixtures = dir.path().join("fixtures.json");
    std::fs::write(
        &fixtures,
        json!({
            "kernel": vmo_testkit::guest_kernel(&guest),
            "initrd": guest.join("initrd.img"),
            "kernelArgs": "console=ttyS0 quiet no_timer_check vmo.netwait=0",
            "disk": guest.join("disk.qcow2"),
        })
        .to_string(),
    )
    .unwrap();
    let token = vmo_client::kubeconfig::load(&up.kubeconfig)
        .expect("kubeconfig")
        .token;
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/web-artifacts");
    // Screenshots from an earlier run must not stand in for this one's.
    let _ = std::fs::remove_dir_all(&artifacts);
    let out = Command::new("node")
        .current_dir(web_dir())
        .arg("tests/run.mjs")
        .arg(up.client().server())
        .arg(&token)
        .arg(&artifacts)
        .arg(&fixtures)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("web ui: ok"),
        "{text}"
    );
    for shot in SCREENSHOTS {
        assert!(artifacts.join(shot).exists(), "screenshot {shot}");
    }
}
