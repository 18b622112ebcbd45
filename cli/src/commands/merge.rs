use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Merge an incremental image and its chain of parents into one standalone image (every
/// record of the image, the pages of the whole chain in one page store, no parent). The
/// chain is left as it was.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The incremental image (the last of its chain).
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub dir: PathBuf,
    /// The standalone image to create.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub out: PathBuf,
    /// Compress page chunks with zstd (default level 3).
    #[arg(long, value_name = "LEVEL", num_args = 0..=1, default_missing_value = "3", require_equals = true)]
    pub compress: Option<i32>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &MergeArgs) -> anyhow::Result<i32> {
    if let Some(level) = a.compress {
        anyhow::ensure!(
            (1..=19).contains(&level),
            "--compress={level}: the level must be 1 to 19"
        );
    }
    let stats = images_format::chain::merge(&a.dir, &a.out, a.compress).with_context(|| {
        format!(
            "merge of {} into {} failed",
            a.dir.display(),
            a.out.display()
        )
    })?;
    if a.json {
        super::print_json(&stats)?;
    } else {
        eprintln!(
            "merged {} images into {}: {} pages in {} chunks",
            stats.images,
            a.out.display(),
            stats.pages,
            stats.chunks
        );
    }
    Ok(0)
}
