fn main() {
    afl::fuzz!(|data: &[u8]| weft_api::fuzzing::wire(data));
}
