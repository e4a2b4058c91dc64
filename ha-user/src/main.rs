fn main() {
    let obj: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hasync-ebpf"));
    println!("{}", obj.len());
}
