pub mod check;
pub mod dump;
pub mod merge;
pub mod restore;
pub mod show;
pub mod verify;
pub mod vzctl;

/// Prints a value as one line of JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}
