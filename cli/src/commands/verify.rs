use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

/// Check an image: headers, versions, checksums of every file and page chunk, and the
/// consistency checks a restore makes before creating any process.
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
    img.dir
        .page_store(&img.pagemap.store)
        .and_then(|s| s.verify_all())
        .with_context(|| format!("image {}: page store is damaged", a.dir.display()))?;
    println!(
        "image {} is valid: {} processes, {} page chunks",
        a.dir.display(),
        img.pstree.processes.len(),
        img.pagemap.store.chunks.len()
    );
    Ok(0)
}
