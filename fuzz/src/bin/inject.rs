fn main() {
    afl::fuzz!(|data: &[u8]| weft_control::fuzzing::inject(data));
}
