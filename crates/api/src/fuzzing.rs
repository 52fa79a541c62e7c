//! The fuzz target of the control-plane wire messages (see `fuzz/`; `weft_proxy::fuzzing`
//! holds the proxy's): any bytes, decoded as each message a proxy or the control plane
//! reads, must not panic, and a message decoded, encoded and decoded again is the same. And
//! [`replay`], with which every crate's tests run its targets' corpus and regressions.

use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(message) = M::decode(data) else {
        return;
    };
    let again = M::decode(message.encode_to_vec().as_slice()).expect("our own encoding decodes");
    assert_eq!(again, message, "encoded then decoded");
}

/// What each side reads from the other: the proxy's messages on the config stream, the
/// control plane's snapshots, and the signing service's request and response.
pub fn wire(data: &[u8]) {
    round_trip::<crate::proto::ProxyMessage>(data);
    round_trip::<crate::proto::Snapshot>(data);
    round_trip::<crate::proto::identity::SignRequest>(data);
    round_trip::<crate::proto::identity::SignResponse>(data);
}

/// Runs every input of `target`'s corpus and regressions (`<fuzz>/corpus/<target>/`,
/// `<fuzz>/regressions/<target>/`) through `run`, and panics naming the first it fails on:
/// how the crates' tests replay them. How many inputs there were.
pub fn replay(fuzz: &std::path::Path, target: &str, run: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} failed on {}", path.display());
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_corpus_input_and_regression_passes_the_wire_target() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        assert!(
            super::replay(&fuzz, "wire", super::wire) > 0,
            "no corpus for wire"
        );
    }
}
