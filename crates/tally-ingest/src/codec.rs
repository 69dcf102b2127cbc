//! The gRPC codec: prost's, except that a request body that is not a valid protobuf message is
//! the client's fault (`INVALID_ARGUMENT`), not the server's (`INTERNAL`, tonic-prost's choice).
//!
//! Generated services use it through `codec_path` in `build.rs`. Encoding is prost's, unchanged.
//! `tests/garbage.rs` sends undecodable frames to a real server and checks the status.

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost encoding; decode failures answered `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Default)]
pub struct TallyCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Codec for TallyCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = TallyDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        self.prost.encoder()
    }

    fn decoder(&mut self) -> TallyDecoder<U> {
        TallyDecoder { prost: self.prost.decoder() }
    }
}

#[derive(Debug)]
pub struct TallyDecoder<U> {
    prost: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for TallyDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.prost.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!("not a valid protobuf message: {}", status.message())),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.prost.buffer_settings()
    }
}
