//! Talking to vmd: one connection per request.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use ipc::control::{Request, Response};
use ipc::Channel;

/// Why vmd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not answer.
    #[error("connect: {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("vmd")]
    Ipc(#[from] ipc::IpcError),
}

/// A request sent, its responses to read.
pub struct Session {
    channel: Channel,
}

impl Session {
    /// Connects to vmd's socket and sends `request`.
    pub fn send(request: &Request) -> Result<Self, ClientError> {
        let path = ipc::control::socket_path();
        let stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        let mut channel = Channel::new(stream);
        channel.send(request, &[])?;
        Ok(Self { channel })
    }

    /// The next response.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        Ok(self.channel.recv::<Response>()?.0)
    }

    /// The next response and the fds that came with it.
    pub fn recv_with_fds(&mut self) -> Result<(Response, Vec<std::os::fd::OwnedFd>), ClientError> {
        Ok(self.channel.recv::<Response>()?)
    }
}
