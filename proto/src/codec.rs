//! The gRPC codec of every generated client and server: prost's, with a guard in front of the
//! decoder for the one message whose nesting the wire does not bound, the txn.
//!
//! tonic hands a codec every message of every RPC; the guard only looks at `TxnRequest`s and at
//! the Raft `Command`s followers forward (matched by type, since the generated code is generic
//! over the message): a txn nested deeper than [`MAX_TXN_DEPTH`] is refused with etcd's
//! `too many operations in txn request` before prost decodes it, instead of prost's
//! recursion-limit error (an `INTERNAL` with a long message) or, just below that limit, a txn
//! that decodes here but not once wrapped in a log entry (see [`crate::nesting`]).

use std::any::TypeId;
use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::etcdserverpb::TxnRequest;
use crate::nesting::{MAX_TXN_DEPTH, field_txn_depth, txn_depth};
use crate::raftpb::Command;
use crate::rpctypes::TOO_MANY_OPS;

/// The buffer each call's encoder and decoder start with (tonic's default is 8 KiB). They grow
/// for larger messages; most requests and answers are far smaller, and a member with a thousand
/// open watch streams held 16 MB in these two buffers alone.
const BUFFER_BYTES: usize = 1024;

/// How much a streaming call encodes before it hands the bytes on (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

/// prost's codec with the nesting guard; named by `codec_path` in `build.rs`.
#[derive(Debug, Clone)]
pub struct GuardedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for GuardedCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for GuardedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GuardedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        GuardedDecoder {
            inner: ProstDecoder::new(buffer_settings()),
        }
    }
}

/// prost's decoder, after the nesting guard.
#[derive(Debug, Clone)]
pub struct GuardedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + 'static> Decoder for GuardedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let measure: fn(&[u8]) -> Option<usize> = if TypeId::of::<U>() == TypeId::of::<TxnRequest>() {
            |bytes| txn_depth(bytes, MAX_TXN_DEPTH)
        } else if TypeId::of::<U>() == TypeId::of::<Command>() {
            // A follower's Forward: the txn is field 3.
            |bytes| field_txn_depth(bytes, 3, MAX_TXN_DEPTH)
        } else {
            return self.inner.decode(buf);
        };
        // Takes the message out of tonic's buffer without copying it (it is one piece).
        let bytes = buf.copy_to_bytes(buf.remaining());
        if measure(&bytes).is_none() {
            return Err(TOO_MANY_OPS.status());
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|err| Status::internal(err.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
