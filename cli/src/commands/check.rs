use clap::Args;

/// Report each kernel facility the engine uses: present or missing.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Item {
    name: &'static str,
    present: bool,
    detail: String,
}

pub fn run(a: &CheckArgs) -> anyhow::Result<i32> {
    let items: Vec<Item> = sys::features::probe_all()
        .into_iter()
        .map(|f| Item {
            name: f.name,
            present: f.present,
            detail: f.detail,
        })
        .collect();
    // Soft-dirty is optional: the engine tracks writes with userfaultfd when it is missing.
    let required_missing = items
        .iter()
        .filter(|i| !i.present && !i.name.starts_with("soft-dirty"))
        .count();
    if a.json {
        super::print_json(
            &serde_json::json!({ "features": items, "missing_required": required_missing }),
        )?;
    } else {
        for i in &items {
            println!(
                "{:<36} {:<8} {}",
                i.name,
                if i.present { "present" } else { "MISSING" },
                i.detail
            );
        }
    }
    Ok(if required_missing == 0 { 0 } else { 1 })
}
