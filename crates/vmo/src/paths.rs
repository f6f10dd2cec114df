//! Where vmo keeps its data by default: `$XDG_DATA_HOME/vmo`, else `~/.local/share/vmo`.

use std::path::PathBuf;

/// The default data directory.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("vmo");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/vmo")
}
