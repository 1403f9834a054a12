//! ELF `vmlinux` extraction from an x86 bzImage whose payload is LZ4-compressed.
//!
//! Layout (Documentation/arch/x86/boot.rst): the real-mode setup occupies `setup_sects + 1`
//! sectors of 512 bytes (`setup_sects` at 0x1f1, 0 meaning 4); the protected-mode code follows,
//! and the compressed kernel lies at `payload_offset` (u32 at 0x248) within it, `payload_length`
//! (u32 at 0x24c) bytes long. With `CONFIG_KERNEL_LZ4` the payload is an LZ4 *legacy* stream
//! followed by the uncompressed size as a u32 (the kernel build's `size_append`).

use crate::ImageError;

/// Magic number of the LZ4 legacy frame format (little-endian on disk: `02 21 4c 18`).
pub const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;

/// Uncompressed size of every block of an LZ4 legacy stream but the last.
const LZ4_LEGACY_BLOCK_LEN: usize = 8 << 20;

/// Worst-case compressed size of one legacy block (`LZ4_compressBound(8 MiB)`).
const LZ4_LEGACY_MAX_COMPRESSED_LEN: usize = LZ4_LEGACY_BLOCK_LEN + LZ4_LEGACY_BLOCK_LEN / 255 + 16;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// True when `bytes` starts with the ELF magic.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(ELF_MAGIC)
}

/// True when `bytes` looks like an x86 bzImage (boot sector signature and `HdrS`).
pub fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.len() > 0x260 && bytes[0x1fe..0x200] == [0x55, 0xaa] && &bytes[0x202..0x206] == b"HdrS"
}

/// Extracts the ELF vmlinux from a bzImage: setup_sects at 0x1f1 (0 means 4), protected-mode
/// code at (setup_sects+1)*512, payload_offset (u32 @0x248) / payload_length (u32 @0x24c)
/// relative to it. The payload must be LZ4 legacy format (magic 0x184C2102, then blocks of
/// `[u32 LE compressed size][data]`, each at most 8 MiB uncompressed); decoding stops at the
/// payload end or at the 4-byte size trailer, and a repeated magic starts a new stream. The
/// result is checked to be an ELF file.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    if is_elf(bzimage) {
        return Err(ImageError::NotBzImage(
            "the file is already an ELF vmlinux, not a bzImage".into(),
        ));
    }
    if !is_bzimage(bzimage) {
        return Err(ImageError::NotBzImage(
            "missing boot sector signature or `HdrS` setup header".into(),
        ));
    }
    let boot_protocol = u16::from_le_bytes([bzimage[0x206], bzimage[0x207]]);
    if boot_protocol < 0x0208 {
        return Err(ImageError::NotBzImage(format!(
            "boot protocol {boot_protocol:#06x} predates payload_offset (needs 2.08+)"
        )));
    }
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let payload_offset = read_u32(bzimage, 0x248) as usize;
    let payload_length = read_u32(bzimage, 0x24c) as usize;
    let start = pm_start
        .checked_add(payload_offset)
        .ok_or_else(|| ImageError::NotBzImage("payload offset overflows".into()))?;
    let end = start
        .checked_add(payload_length)
        .filter(|&end| end <= bzimage.len())
        .ok_or_else(|| {
            ImageError::NotBzImage(format!(
                "payload [{start}, +{payload_length}) lies outside the {}-byte file",
                bzimage.len()
            ))
        })?;
    let payload = &bzimage[start..end];
    if let Some(name) = foreign_compression(payload) {
        return Err(ImageError::UnsupportedCompression(name));
    }
    let vmlinux = decompress_lz4_legacy(payload)?;
    if !is_elf(&vmlinux) {
        return Err(ImageError::NotElf(
            "the decompressed bzImage payload".into(),
        ));
    }
    Ok(vmlinux)
}

/// Decodes an LZ4 legacy stream. A trailing 4-byte value after the last block is taken as the
/// kernel's appended uncompressed size and checked against the output length.
pub fn decompress_lz4_legacy(stream: &[u8]) -> Result<Vec<u8>, ImageError> {
    if stream.len() < 4 || read_u32(stream, 0) != LZ4_LEGACY_MAGIC {
        return Err(ImageError::CorruptPayload(
            "missing LZ4 legacy magic 0x184C2102".into(),
        ));
    }
    let mut out: Vec<u8> = Vec::new();
    let mut pos = 4;
    let mut blocks = 0usize;
    loop {
        let remaining = stream.len() - pos;
        if remaining < 4 {
            if remaining != 0 {
                return Err(ImageError::CorruptPayload(format!(
                    "{remaining} stray bytes after block {blocks}"
                )));
            }
            break;
        }
        let word = read_u32(stream, pos);
        if word == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let compressed_len = word as usize;
        if remaining == 4 {
            // The kernel appends the uncompressed size (mod 2^32) after the stream.
            if blocks > 0 && word != out.len() as u32 {
                return Err(ImageError::CorruptPayload(format!(
                    "decompressed {} bytes but the payload trailer says {word}",
                    out.len()
                )));
            }
            break;
        }
        if compressed_len == 0
            || compressed_len > LZ4_LEGACY_MAX_COMPRESSED_LEN
            || compressed_len > remaining - 4
        {
            return Err(ImageError::CorruptPayload(format!(
                "block {blocks} claims {compressed_len} compressed bytes with {} left",
                remaining - 4
            )));
        }
        let block = &stream[pos + 4..pos + 4 + compressed_len];
        let old_len = out.len();
        out.resize(old_len + LZ4_LEGACY_BLOCK_LEN, 0);
        let n = lz4_flex::block::decompress_into(block, &mut out[old_len..])
            .map_err(|e| ImageError::CorruptPayload(format!("block {blocks}: {e}")))?;
        out.truncate(old_len + n);
        pos += 4 + compressed_len;
        blocks += 1;
    }
    if blocks == 0 {
        return Err(ImageError::CorruptPayload("no blocks".into()));
    }
    Ok(out)
}

/// Names the compression of a payload that is not LZ4, if recognised.
fn foreign_compression(payload: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (b"BZh", "bzip2"),
        (&[0x89, b'L', b'Z', b'O'], "lzo"),
        (&[0x5d, 0x00, 0x00], "lzma"),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| payload.starts_with(magic))
        .map(|&(_, name)| name)
}

/// The kernel release named by the `Linux version <release> ...` banner inside a kernel image,
/// if found (works on an uncompressed vmlinux).
pub fn banner_version(vmlinux: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(i) = find(&vmlinux[from..], NEEDLE) {
        let start = from + i + NEEDLE.len();
        let rest = &vmlinux[start..vmlinux.len().min(start + 128)];
        let len = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || b"._+-~".contains(b)))
            .unwrap_or(rest.len());
        // The banner continues with " (builder@host)"; a bare format string does not.
        if len > 0 && rest.get(len) == Some(&b' ') && rest[0].is_ascii_digit() {
            return Some(String::from_utf8_lossy(&rest[..len]).into_owned());
        }
        from = start;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL_DEB: &str =
        "/var/cache/bandsox/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb";

    fn legacy_stream(chunks: &[&[u8]], trailer: bool) -> Vec<u8> {
        let mut s = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        let mut total = 0u32;
        for chunk in chunks {
            let c = lz4_flex::block::compress(chunk);
            s.extend_from_slice(&(c.len() as u32).to_le_bytes());
            s.extend_from_slice(&c);
            total += chunk.len() as u32;
        }
        if trailer {
            s.extend_from_slice(&total.to_le_bytes());
        }
        s
    }

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3u8;
        let pm_start = (usize::from(setup_sects) + 1) * 512;
        let payload_offset = 0x40usize;
        let mut img = vec![0u8; pm_start + payload_offset];
        img[0x1f1] = setup_sects;
        img[0x1fe] = 0x55;
        img[0x1ff] = 0xaa;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0xcc; 100]); // trailing setup data / padding
        img
    }

    fn fake_elf(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        v[..4].copy_from_slice(ELF_MAGIC);
        v
    }

    #[test]
    fn synthetic_legacy_stream_roundtrips() {
        let elf = fake_elf(LZ4_LEGACY_BLOCK_LEN + 12345);
        let (a, b) = elf.split_at(LZ4_LEGACY_BLOCK_LEN);
        let img = fake_bzimage(&legacy_stream(&[a, b], true));
        assert_eq!(extract_vmlinux(&img).unwrap(), elf);
        // Without the size trailer, and with a repeated magic between blocks.
        let mut s = legacy_stream(&[a], false);
        s.extend_from_slice(&legacy_stream(&[b], false));
        assert_eq!(extract_vmlinux(&fake_bzimage(&s)).unwrap(), elf);
    }

    #[test]
    fn bad_trailer_and_truncation_are_errors() {
        let elf = fake_elf(5000);
        let mut s = legacy_stream(&[&elf], false);
        s.extend_from_slice(&4999u32.to_le_bytes());
        assert!(matches!(
            extract_vmlinux(&fake_bzimage(&s)),
            Err(ImageError::CorruptPayload(_))
        ));
        let s = legacy_stream(&[&elf], false);
        let cut = &s[..s.len() - 10];
        assert!(matches!(
            extract_vmlinux(&fake_bzimage(cut)),
            Err(ImageError::CorruptPayload(_))
        ));
    }

    #[test]
    fn non_elf_and_foreign_payloads_are_rejected() {
        let not_elf = vec![7u8; 4096];
        let img = fake_bzimage(&legacy_stream(&[&not_elf], true));
        assert!(matches!(extract_vmlinux(&img), Err(ImageError::NotElf(_))));
        let gz = fake_bzimage(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let err = extract_vmlinux(&gz).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedCompression("gzip")));
        assert!(err.to_string().contains("gzip"), "{err}");
        assert!(matches!(
            extract_vmlinux(b"\x7fELF rest"),
            Err(ImageError::NotBzImage(_))
        ));
        assert!(matches!(
            extract_vmlinux(&[0u8; 1024]),
            Err(ImageError::NotBzImage(_))
        ));
    }

    #[test]
    fn banner_version_is_found() {
        let mut v = b"\x7fELF....Linux version %s (%s)\0....".to_vec();
        v.extend_from_slice(b"Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists) #1 SMP");
        assert_eq!(banner_version(&v).as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(banner_version(b"nothing here"), None);
    }

    /// Extracts the real Debian kernel when its package is cached on this machine.
    #[test]
    fn real_debian_kernel_extracts() {
        let deb = std::path::Path::new(KERNEL_DEB);
        if !deb.exists() {
            eprintln!("skipping: {KERNEL_DEB} not present");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(dir.path())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("skipping: dpkg-deb unavailable");
            return;
        }
        let bz = std::fs::read(dir.path().join("boot/vmlinuz-6.1.0-56-cloud-amd64")).unwrap();
        let vmlinux = extract_vmlinux(&bz).unwrap();
        assert!(
            vmlinux.len() > 20 << 20,
            "vmlinux is {} bytes",
            vmlinux.len()
        );
        assert_eq!(&vmlinux[..4], ELF_MAGIC);
        assert_eq!(vmlinux[4], 2, "64-bit ELF");
        assert_eq!(
            banner_version(&vmlinux).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
    }
}
