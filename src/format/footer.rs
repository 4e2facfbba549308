//! The fixed-size footer at the end of every converted blob.
//!
//! A reader that knows only the blob's size fetches its last
//! [`FOOTER_SIZE`] bytes and learns where the TOC is. The footer is a zstd
//! skippable frame, so decoders that know nothing of loci step over it.

use super::limits::over;
use super::{FormatError, Limits, SKIPPABLE_HEADER, SKIPPABLE_MAGIC_FOOTER};

/// Size of the footer in bytes.
pub const FOOTER_SIZE: usize = 48;
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Identifies a loci footer inside the skippable frame.
const FOOTER_MAGIC: &[u8; 8] = b"LOCITOC\0";

/// Where the TOC is, and which format version the layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Format version of the layer.
    pub version: u32,
    /// Offset of the TOC skippable frame in the blob.
    pub toc_offset: u64,
    /// Length of the TOC skippable frame (header included).
    pub toc_length: u64,
    /// Length of the TOC once decompressed, to bound the decoder.
    pub toc_uncompressed_len: u64,
}

impl Footer {
    /// Serializes the footer as a skippable frame of exactly FOOTER_SIZE bytes.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut out = [0u8; FOOTER_SIZE];
        out[0..4].copy_from_slice(&SKIPPABLE_MAGIC_FOOTER.to_le_bytes());
        out[4..8].copy_from_slice(&((FOOTER_SIZE - SKIPPABLE_HEADER) as u32).to_le_bytes());
        out[8..16].copy_from_slice(FOOTER_MAGIC);
        out[16..20].copy_from_slice(&self.version.to_le_bytes());
        // 20..24 reserved for flags.
        out[24..32].copy_from_slice(&self.toc_offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.toc_length.to_le_bytes());
        out[40..48].copy_from_slice(&self.toc_uncompressed_len.to_le_bytes());
        out
    }

    /// Parses the last bytes of a blob of `blob_size` bytes and checks that
    /// the TOC it locates lies inside the blob, before the footer, and is
    /// no longer than `limits` allow (a reader fetches it next).
    pub fn parse(tail: &[u8], blob_size: u64, limits: &Limits) -> Result<Footer, FormatError> {
        if blob_size < FOOTER_SIZE as u64 || tail.len() < FOOTER_SIZE {
            return Err(FormatError::Truncated {
                needed: FOOTER_SIZE as u64,
                actual: blob_size.min(tail.len() as u64),
            });
        }
        let b: &[u8; FOOTER_SIZE] = tail[tail.len() - FOOTER_SIZE..]
            .try_into()
            .map_err(|_| FormatError::NoFooter)?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(word)
        };
        if u32_at(0) != SKIPPABLE_MAGIC_FOOTER
            || u32_at(4) as usize != FOOTER_SIZE - SKIPPABLE_HEADER
            || &b[8..16] != FOOTER_MAGIC
        {
            return Err(FormatError::NoFooter);
        }
        let footer = Footer {
            version: u32_at(16),
            toc_offset: u64_at(24),
            toc_length: u64_at(32),
            toc_uncompressed_len: u64_at(40),
        };
        if footer.version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: footer.version,
                supported: FORMAT_VERSION,
            });
        }
        let limit = blob_size - FOOTER_SIZE as u64;
        let end = footer.toc_offset.checked_add(footer.toc_length);
        if end != Some(limit) || footer.toc_length < SKIPPABLE_HEADER as u64 {
            return Err(FormatError::FooterOutOfBounds {
                offset: footer.toc_offset,
                length: footer.toc_length,
                limit,
            });
        }
        if footer.toc_length > limits.max_toc_frame_bytes {
            return Err(over(
                "the TOC frame's length",
                footer.toc_length,
                limits.max_toc_frame_bytes,
                "max_toc_frame_bytes",
            ));
        }
        Ok(footer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn footer() -> Footer {
        Footer {
            version: FORMAT_VERSION,
            toc_offset: 1000,
            toc_length: 200,
            toc_uncompressed_len: 5000,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = footer().to_bytes();
        assert_eq!(
            Footer::parse(&bytes, 1248, &Limits::default()).unwrap(),
            footer()
        );
    }

    #[test]
    fn refuses_toc_outside_blob() {
        let bytes = footer().to_bytes();
        assert!(matches!(
            Footer::parse(&bytes, 900, &Limits::default()),
            Err(FormatError::FooterOutOfBounds { .. })
        ));
    }

    #[test]
    fn refuses_non_footer_and_short_input() {
        assert!(matches!(
            Footer::parse(&[0u8; 48], 4096, &Limits::default()),
            Err(FormatError::NoFooter)
        ));
        assert!(matches!(
            Footer::parse(&[0u8; 10], 10, &Limits::default()),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn refuses_future_versions() {
        let mut f = footer();
        f.version = 99;
        assert!(matches!(
            Footer::parse(&f.to_bytes(), 1248, &Limits::default()),
            Err(FormatError::UnsupportedVersion { found: 99, .. })
        ));
    }
}
