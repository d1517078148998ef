//! How a canvas becomes the bytes of one image file: one [`Encoding`] per run. Folders name their
//! files with its extension, shards their tar members; the drivers record it in every settings
//! fingerprint (not PNG, the default, so that older records still resume). An output format is one
//! variant here: the command line lists [`ALL`].

use crate::error::Result;
use crate::render::{ImageFormat, PngConfig, PngScratch};
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// PNG, RGB or gray (`PngConfig`), the originals' files.
    #[default]
    Png,
    /// NumPy `.npy` (format 1.0): uint8, H x W where every colour is a gray, else H x W x 3, C
    /// order, the header padded to 64 bytes as `numpy.save` does; what `numpy.load` and
    /// `webdataset`'s `.decode()` read.
    Npy,
}

/// Every encoding (the `--encoding` values).
pub const ALL: &[Encoding] = &[Encoding::Png, Encoding::Npy];

/// An encoder thread's reusable state.
#[derive(Default)]
pub struct Scratch {
    png: PngScratch,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Png => "png",
            Encoding::Npy => "npy",
        }
    }

    /// The files' extension and the tar members' suffix.
    pub fn extension(self) -> &'static str {
        self.name()
    }

    /// Flip `flip` of a canvas of format `image`, encoded into `out`.
    pub fn encode(
        self,
        canvas: &[u8],
        image: &ImageFormat,
        flip: u8,
        png: PngConfig,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let (w, h) = (image.width as usize, image.height as usize);
        match self {
            Encoding::Png => crate::render::encode_canvas(
                canvas,
                w,
                h,
                flip,
                &image.palette,
                png,
                &mut scratch.png,
                out,
            ),
            Encoding::Npy => {
                let ch = npy_channels(image);
                out.extend_from_slice(&npy_header(image, ch));
                let start = out.len();
                out.resize(start + w * h * ch, 0);
                let pixels = &mut out[start..];
                crate::render::write_flip_into(canvas, w, h, flip, &image.palette, ch, pixels);
                Ok(())
            }
        }
    }

    /// A cheap check that a finished file is whole and of this geometry (what a resume keeps).
    pub fn is_whole(self, path: &Path, image: &ImageFormat, png: PngConfig) -> bool {
        match self {
            Encoding::Png => png_is_whole(path, image.width, image.height, png.gray),
            Encoding::Npy => {
                use std::io::Read;
                let ch = npy_channels(image);
                let head = npy_header(image, ch);
                let size = head.len() + (image.width * image.height) as usize * ch;
                let mut got = vec![0; head.len()];
                std::fs::File::open(path).is_ok_and(|mut f| {
                    f.metadata().is_ok_and(|m| m.len() == size as u64)
                        && f.read_exact(&mut got).is_ok()
                        && got == head
                })
            }
        }
    }

    /// The encoding a settings fingerprint records (PNG when it names none).
    pub fn recorded(fingerprint: &serde_json::Value) -> Option<Encoding> {
        match fingerprint.get("encoding").and_then(|e| e.as_str()) {
            None => Some(Encoding::Png),
            Some(name) => ALL.iter().copied().find(|e| e.name() == name),
        }
    }

    /// Adds the encoding to a settings fingerprint (PNG, the default, adds nothing).
    pub fn record(self, fingerprint: &mut serde_json::Value) {
        if self != Encoding::Png
            && let Some(m) = fingerprint.as_object_mut()
        {
            m.insert("encoding".into(), self.name().into());
        }
    }
}

impl clap::ValueEnum for Encoding {
    fn value_variants<'a>() -> &'a [Self] {
        ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

/// A cheap structural check of a finished image (two small reads, no decoding): the PNG signature,
/// an IHDR of the expected size, 8-bit depth and colour type, and the IEND chunk at the very end.
/// Catches truncated, emptied and other-settings images; a file rewritten with valid PNG bytes of
/// the same geometry passes (files are only ever written whole, by rename).
fn png_is_whole(path: &Path, width: u32, height: u32, gray: bool) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 26];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    const SIG: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let ok_head = head[..8] == SIG
        && be(&head[8..12]) == 13
        && &head[12..16] == b"IHDR"
        && be(&head[16..20]) == width
        && be(&head[20..24]) == height
        && head[24] == 8
        && head[25] == if gray { 0 } else { 2 };
    if !ok_head {
        return false;
    }
    let mut tail = [0u8; 12];
    f.seek(SeekFrom::End(-12)).is_ok()
        && f.read_exact(&mut tail).is_ok()
        && tail == [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]
}

/// 1 where every colour of the palette is a gray (FractalDB's gray draw types, RCDB,
/// MV-FractalDB), else 3.
fn npy_channels(image: &ImageFormat) -> usize {
    if image.palette.iter().all(|&[r, g, b]| r == g && g == b) {
        1
    } else {
        3
    }
}

/// The `.npy` header of an image: magic, version 1.0, the dict, spaces and a newline up to a
/// multiple of 64 bytes.
fn npy_header(image: &ImageFormat, channels: usize) -> Vec<u8> {
    let (w, h) = (image.width, image.height);
    let shape = match channels {
        1 => format!("({h}, {w})"),
        c => format!("({h}, {w}, {c})"),
    };
    let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    let len = (10 + dict.len() + 1).div_ceil(64) * 64 - 10;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(10 + len - 1, b' ');
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_numpys() {
        // numpy.save(f, numpy.zeros((32, 48), numpy.uint8)) writes these 128 bytes of header.
        let head = npy_header(&ImageFormat::gray(48, 32), 1);
        assert_eq!(head.len(), 128);
        assert_eq!(&head[..10], b"\x93NUMPY\x01\x00\x76\x00");
        let text = std::str::from_utf8(&head[10..]).unwrap();
        assert!(text.starts_with("{'descr': '|u1', 'fortran_order': False, 'shape': (32, 48), }"));
        assert!(text.ends_with(" \n"));
    }
}
