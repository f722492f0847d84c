//! Placeholder: this bench is being written (issue 5).
fn main() {}
