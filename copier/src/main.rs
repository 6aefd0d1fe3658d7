fn main() {
    println!("openshell-copier {}", env!("CARGO_PKG_VERSION"));
}
