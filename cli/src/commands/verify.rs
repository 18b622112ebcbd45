use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Check an image: headers, versions, checksums of every file and page chunk, and the
/// consistency checks a restore makes before creating any process. An incremental image is
/// checked with its whole chain of parents: every image's records and page chunks, and every
/// page it refers to held by its parent.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(a: &VerifyArgs) -> anyhow::Result<i32> {
    let img = rst::Images::load(&a.dir)
        .with_context(|| format!("image {} is not valid", a.dir.display()))?;
    rst::validate::validate(&img)
        .with_context(|| format!("image {} is not valid", a.dir.display()))?;
    img.chain
        .store()
        .and_then(|s| s.verify_all())
        .with_context(|| format!("image {}: page store is damaged", a.dir.display()))?;
    let chain = if img.chain.images.len() > 1 {
        format!(
            ", incremental: a chain of {} images down to {}",
            img.chain.images.len(),
            img.chain
                .images
                .last()
                .map(|i| i.dir.path().display().to_string())
                .unwrap_or_default()
        )
    } else {
        String::new()
    };
    println!(
        "image {} is valid: {} processes, {} page chunks{chain}",
        a.dir.display(),
        img.pstree.processes.len(),
        img.chain.chunk_count()
    );
    Ok(0)
}
