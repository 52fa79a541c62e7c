//! Fuzz targets for the control-plane wire messages (see `fuzz/`, and `weft_proxy::fuzzing`
//! for the proxy's parsers): any bytes, decoded as each message a proxy or the control plane
//! reads, must not panic, and a message decoded, encoded and decoded again is the same.

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

#[cfg(test)]
mod tests {
    #[test]
    fn every_corpus_input_and_regression_passes_the_wire_target() {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join("wire")) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| super::wire(&data));
                assert!(outcome.is_ok(), "wire failed on {}", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus for wire");
    }
}
