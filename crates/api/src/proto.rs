//! The control plane's protocols: the config stream (`proto/weft/config/v1/config.proto`) and
//! certificate signing ([`identity`]).

#![allow(missing_docs, clippy::all, reason = "generated code")]

tonic::include_proto!("weft.config.v1");

/// Certificate signing (`proto/weft/identity/v1/identity.proto`).
pub mod identity {
    tonic::include_proto!("weft.identity.v1");
}
