//! Builds the minimal busybox root filesystem and its ext4 image:
//!
//! ```text
//! cargo run -p bandsox-image --example busybox_rootfs -- BUSYBOX DEST_DIR OUT.ext4
//! ```

use std::path::PathBuf;

use bandsox_image::rootfs::{build_busybox_rootfs, make_ext4_from_dir};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [busybox, dest, out] = args.as_slice() else {
        return Err("usage: busybox_rootfs BUSYBOX DEST_DIR OUT.ext4".into());
    };
    build_busybox_rootfs(busybox, dest)?;
    let size_bytes = make_ext4_from_dir(dest, out, "bandsox-root")?;
    println!("{} ({} MiB)", out.display(), size_bytes >> 20);
    Ok(())
}
