fn main() {
    println!("openshell-sandbox {}", env!("CARGO_PKG_VERSION"));
}
