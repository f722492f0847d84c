//! parlor-bench: the load tool (issue 5) is being written.
fn main() {
    eprintln!("parlor-bench is not built yet");
    std::process::exit(2);
}
