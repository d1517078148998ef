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
}

/// Every encoding (the `--encoding` values).
pub const ALL: &[Encoding] = &[Encoding::Png];

/// An encoder thread's reusable state.
#[derive(Default)]
pub struct Scratch {
    png: PngScratch,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Png => "png",
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
        }
    }

    /// A cheap check that a finished file is whole and of this geometry (what a resume keeps).
    pub fn is_whole(self, path: &Path, image: &ImageFormat, png: PngConfig) -> bool {
        match self {
            Encoding::Png => {
                crate::sink::folder::image_is_whole(path, image.width, image.height, png.gray)
            }
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
