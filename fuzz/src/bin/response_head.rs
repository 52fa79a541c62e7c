fn main() {
    afl::fuzz!(|data: &[u8]| weft_proxy::fuzzing::response_head(data));
}
