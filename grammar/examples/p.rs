fn main() {
    let src = std::fs::read_to_string(std::env::args().nth(1).unwrap()).unwrap();
    match muse_grammar::parse(&src) { Ok(f) => println!("ok {} items", f.items.len()), Err(e) => println!("{:?}", e) }
}
