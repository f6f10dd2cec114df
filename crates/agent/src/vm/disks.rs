//! Turning a VMI's volumes into files QEMU opens: host disks checked (or created), empty disks and
//! copy-on-write overlays created with qemu-img in the VM's run directory, and NoCloud seeds written
//! as ISO 9660 images labelled `cidata`. Every failure names the volume field at fault.

use super::plan::{DiskPlan, PlanError};
use base64::Engine;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmo_api::kinds::kubevirt::{CloudInitNoCloud, VmiSpec, Volume};
use vmo_api::Quantity;

/// Secret data the caller fetched for `secretRef`s: secret name -> key -> bytes.
pub type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// What identifies the VM inside its NoCloud seed.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub hostname: String,
}

fn err(field: String, why: impl Into<String>) -> PlanError {
    PlanError {
        field,
        why: why.into(),
    }
}

fn run(cmd: &mut Command, field: &str) -> Result<String, PlanError> {
    let out = cmd.output().map_err(|e| {
        err(
            field.to_string(),
            format!("running {:?}: {e}", cmd.get_program()),
        )
    })?;
    if !out.status.success() {
        return Err(err(
            field.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image format qemu-img sees (`raw`, `qcow2`, ...).
pub fn image_format(path: &Path, field: &str) -> Result<String, PlanError> {
    let out = run(
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(path),
        field,
    )?;
    let info: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| err(field.to_string(), format!("qemu-img info: {e}")))?;
    Ok(info["format"].as_str().unwrap_or("raw").to_string())
}

fn bytes_of(text: &str, field: &str) -> Result<u64, PlanError> {
    Quantity::parse(text)
        .ok()
        .and_then(|q| q.value_ceil())
        .filter(|b| *b > 0)
        .map(|b| b as u64)
        .ok_or_else(|| err(field.to_string(), format!("{text:?} is not a size")))
}

/// Prepares every disk of the spec in `run_dir` and returns their plans, in device order.
pub fn prepare(
    spec: &VmiSpec,
    run_dir: &Path,
    identity: &Identity,
    secrets: &Secrets,
    claims: &BTreeMap<String, PathBuf>,
) -> Result<Vec<DiskPlan>, PlanError> {
    let mut plans = Vec::new();
    for (i, disk) in spec.domain.devices.disks.iter().enumerate() {
        let (index, volume) = spec
            .volumes
            .iter()
            .enumerate()
            .find(|(_, v)| v.name == disk.name)
            .ok_or_else(|| {
                err(
                    format!("spec.domain.devices.disks[{i}].name"),
                    format!("no volume named {:?}", disk.name),
                )
            })?;
        let field = format!("spec.volumes[{index}]");
        let (path, format) = match claims.get(&volume.name) {
            Some(file) if volume.ephemeral.is_some() => (
                overlay(file, run_dir, &volume.name, &format!("{field}.ephemeral"))?,
                "qcow2".into(),
            ),
            Some(file) => {
                let f = format!("{field}.persistentVolumeClaim");
                (file.clone(), image_format(file, &f)?)
            }
            None => prepare_volume(volume, &field, run_dir, identity, secrets)?,
        };
        plans.push(DiskPlan::new(disk, path, &format).map_err(|e| err(field.clone(), e.why))?);
    }
    Ok(plans)
}

fn prepare_volume(
    volume: &Volume,
    field: &str,
    run_dir: &Path,
    identity: &Identity,
    secrets: &Secrets,
) -> Result<(PathBuf, String), PlanError> {
    if let Some(host) = &volume.host_disk {
        let f = format!("{field}.hostDisk.path");
        let path = PathBuf::from(&host.path);
        if !path.exists() {
            if host.disk_type != "DiskOrCreate" {
                return Err(err(f, format!("{} does not exist on this node", host.path)));
            }
            let capacity = host.capacity.as_ref().map(|c| c.0.as_str()).unwrap_or("");
            let size = bytes_of(capacity, &format!("{field}.hostDisk.capacity"))?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err(f.clone(), e.to_string()))?;
            }
            let file = std::fs::File::create(&path).map_err(|e| err(f.clone(), e.to_string()))?;
            file.set_len(size)
                .map_err(|e| err(f.clone(), e.to_string()))?;
        }
        let format = image_format(&path, &f)?;
        return Ok((path, format));
    }
    if let Some(empty) = &volume.empty_disk {
        let f = format!("{field}.emptyDisk.capacity");
        let size = bytes_of(&empty.capacity.0, &f)?;
        let path = run_dir.join(format!("{}.qcow2", volume.name));
        if !path.exists() {
            run(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&path)
                    .arg(size.to_string()),
                &f,
            )?;
        }
        return Ok((path, "qcow2".into()));
    }
    if let Some(container) = volume.extra.get("containerDisk") {
        // vmo reads containerDisk.image as an image file on the node; the VM writes to a
        // copy-on-write overlay that is discarded with the instance.
        let f = format!("{field}.containerDisk.image");
        let image = container["image"].as_str().unwrap_or("");
        if !image.starts_with('/') || !Path::new(image).exists() {
            return Err(err(
                f,
                format!("{image:?} is not an image file on this node"),
            ));
        }
        return Ok((
            overlay(Path::new(image), run_dir, &volume.name, &f)?,
            "qcow2".into(),
        ));
    }
    if let Some(ci) = &volume.cloud_init_no_cloud {
        let path = run_dir.join(format!("{}.cidata.iso", volume.name));
        write_seed(
            ci,
            &format!("{field}.cloudInitNoCloud"),
            &path,
            run_dir,
            identity,
            secrets,
        )?;
        return Ok((path, "raw".into()));
    }
    let source = volume
        .extra
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| "none".into());
    Err(err(
        field.to_string(),
        format!("volume source {source:?} is not supported on this node yet"),
    ))
}

/// A fresh copy-on-write overlay on `image` in the run directory, discarded with the instance.
fn overlay(image: &Path, run_dir: &Path, volume: &str, field: &str) -> Result<PathBuf, PlanError> {
    let backing_format = image_format(image, field)?;
    let path = run_dir.join(format!("{volume}.overlay.qcow2"));
    let _ = std::fs::remove_file(&path);
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", &backing_format, "-b"])
            .arg(image)
            .arg(&path),
        field,
    )?;
    Ok(path)
}

fn decode_b64(text: &str, field: String) -> Result<Vec<u8>, PlanError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| err(field, format!("not base64: {e}")))
}

fn from_secret(
    secrets: &Secrets,
    name: &str,
    keys: &[&str],
    field: String,
) -> Result<Vec<u8>, PlanError> {
    let data = secrets
        .get(name)
        .ok_or_else(|| err(field.clone(), format!("secret {name:?} not found")))?;
    keys.iter()
        .find_map(|k| data.get(*k).cloned())
        .ok_or_else(|| {
            err(
                field,
                format!("secret {name:?} has none of the keys {keys:?}"),
            )
        })
}

/// Writes a NoCloud seed ISO (`meta-data`, `user-data`, optional `network-config`).
fn write_seed(
    ci: &CloudInitNoCloud,
    field: &str,
    iso: &Path,
    run_dir: &Path,
    identity: &Identity,
    secrets: &Secrets,
) -> Result<(), PlanError> {
    let user_data = match (&ci.user_data, &ci.user_data_base64, &ci.secret_ref) {
        (Some(text), _, _) => text.as_bytes().to_vec(),
        (None, Some(b64), _) => decode_b64(b64, format!("{field}.userDataBase64"))?,
        (None, None, Some(r)) => from_secret(
            secrets,
            &r.name,
            &["userdata", "userData"],
            format!("{field}.secretRef"),
        )?,
        (None, None, None) => Vec::new(),
    };
    let network = match (
        &ci.network_data,
        &ci.network_data_base64,
        &ci.network_data_secret_ref,
    ) {
        (Some(text), _, _) => Some(text.as_bytes().to_vec()),
        (None, Some(b64), _) => Some(decode_b64(b64, format!("{field}.networkDataBase64"))?),
        (None, None, Some(r)) => Some(from_secret(
            secrets,
            &r.name,
            &["networkdata", "networkData"],
            format!("{field}.networkDataSecretRef"),
        )?),
        (None, None, None) => None,
    };
    let dir = run_dir.join(format!(
        "{}.cidata",
        iso.file_stem().and_then(|s| s.to_str()).unwrap_or("seed")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| err(field.to_string(), e.to_string()))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).map_err(|e| err(field.to_string(), e.to_string()))
    };
    write(
        "meta-data",
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            identity.instance_id, identity.hostname
        )
        .as_bytes(),
    )?;
    write("user-data", &user_data)?;
    let mut files = vec!["meta-data", "user-data"];
    if let Some(n) = &network {
        write("network-config", n)?;
        files.push("network-config");
    }
    let mut cmd = Command::new("genisoimage");
    cmd.args(["-quiet", "-output"])
        .arg(iso)
        .args(["-volid", "cidata", "-joliet", "-rock"]);
    for f in files {
        cmd.arg(dir.join(f));
    }
    run(&mut cmd, field)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
