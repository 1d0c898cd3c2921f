//! The typed answer to a proposed command: each client request has one response type, and
//! [`Api::answer`](super::Api::answer) hands it back with the header filled in, so a service
//! neither matches on the state machine's response enum nor fills headers by hand.

use concord_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    ResponseHeader, TxnResponse,
};
use concord_proto::raftpb::command_response::Response;

/// A response type the state machine answers a command with.
pub trait Answer: Sized {
    /// What the command's request is called, for the error when the state machine answered
    /// something else (a bug).
    const REQUEST: &'static str;

    /// This response, if `response` is one.
    fn from_response(response: Response) -> Option<Self>;

    /// The response's header.
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! answers {
    ($($ty:ty => $variant:ident, $request:literal;)*) => {
        $(
            impl Answer for $ty {
                const REQUEST: &'static str = $request;

                fn from_response(response: Response) -> Option<Self> {
                    match response {
                        Response::$variant(answer) => Some(answer),
                        _ => None,
                    }
                }

                fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                    &mut self.header
                }
            }
        )*
    };
}

answers! {
    PutResponse => Put, "put";
    DeleteRangeResponse => DeleteRange, "delete range";
    TxnResponse => Txn, "txn";
    CompactionResponse => Compaction, "compaction";
    LeaseGrantResponse => LeaseGrant, "lease grant";
    LeaseRevokeResponse => LeaseRevoke, "lease revoke";
}
