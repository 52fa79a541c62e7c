//! The config stream protocol (`proto/weft/config/v1/config.proto`).

#![allow(missing_docs, clippy::all, reason = "generated code")]

tonic::include_proto!("weft.config.v1");
