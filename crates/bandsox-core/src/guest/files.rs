//! Files inside a VM. Paths must be absolute (the agent refuses others with `invalid_path`).
//! Bytes travel as flow-controlled data frames: [`Manager::upload`] and [`Manager::download`]
//! stream any size with at most one chunk (64 KiB) buffered on the host side.

use bandsox_protocol::frame::Channel;
use bandsox_protocol::{
    BatchFile, FileEntry, FileReadRequest, FileReadTextRequest, FileWriteBatchRequest,
    FileWriteRequest, ReplyBody, Request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::commands::CALL_TIMEOUT;
use super::unexpected;
use crate::agent::{AgentStream, StreamItem};
use crate::error::{CoreError, Result};
use crate::manager::Manager;

/// Bytes of a file read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileContent {
    pub bytes: Vec<u8>,
    /// Size of the file in the guest.
    pub size: u64,
    /// The file had more bytes than the cap allowed.
    pub truncated: bool,
    /// MIME type when the content is an image (or PDF) recognised by its magic bytes.
    pub mime: Option<String>,
}

/// A window of lines of a text file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextWindow {
    pub content: String,
    pub total_lines: u64,
    pub truncated: bool,
}

/// How to write a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits; default kept for an existing file, 0o644 for a new one.
    pub mode: Option<u32>,
    pub append: bool,
    /// Create missing parent directories (`mkdir -p`).
    pub create_parents: bool,
}

async fn single(stream: &mut AgentStream) -> Result<ReplyBody> {
    loop {
        if let StreamItem::Reply(body) = stream.next().await? {
            return Ok(body);
        }
    }
}

impl Manager {
    async fn file_call(&self, id: &str, req: Request) -> Result<ReplyBody> {
        let agent = self.agent(id).await?;
        agent.call(&req, CALL_TIMEOUT).await
    }

    /// Reads a file's bytes from `offset`, at most `max_bytes` (then `truncated`).
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
        offset: u64,
        max_bytes: Option<u64>,
    ) -> Result<FileContent> {
        let mut out = FileContent::default();
        let (size, truncated, mime) = self
            .read_into(id, path, offset, max_bytes, |b| {
                out.bytes.extend_from_slice(b);
                async { Ok(()) }
            })
            .await?;
        out.size = size;
        out.truncated = truncated;
        out.mime = mime;
        Ok(out)
    }

    /// Streams a file into `writer`; returns the number of bytes written.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        id: &str,
        path: &str,
        writer: &mut W,
    ) -> Result<u64> {
        if let Some((mut f, _)) = self.offline_file(id, path).await? {
            let n = tokio::io::copy(&mut f, writer).await?;
            writer.flush().await?;
            return Ok(n);
        }
        let agent = self.agent(id).await?;
        let mut stream = agent
            .open(&Request::FileRead(FileReadRequest {
                path: path.to_owned(),
                offset: 0,
                max_bytes: None,
            }))
            .await?;
        let mut written = 0u64;
        loop {
            match stream.next().await? {
                StreamItem::Data(Channel::Stdout, b) => {
                    writer.write_all(&b).await?;
                    written += b.len() as u64;
                }
                StreamItem::Reply(ReplyBody::FileRead { .. }) => break,
                StreamItem::Reply(other) => return Err(unexpected("file_read", &other)),
                _ => {}
            }
        }
        writer.flush().await?;
        Ok(written)
    }

    async fn read_into<F, Fut>(
        &self,
        id: &str,
        path: &str,
        offset: u64,
        max_bytes: Option<u64>,
        mut sink: F,
    ) -> Result<(u64, bool, Option<String>)>
    where
        F: FnMut(&[u8]) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if let Some((mut f, size)) = self.offline_file(id, path).await? {
            f.seek(std::io::SeekFrom::Start(offset.min(size))).await?;
            let want = max_bytes.map_or(u64::MAX, |m| m.min(size.saturating_sub(offset)));
            let mut left = want.min(size.saturating_sub(offset));
            const CHUNK: u64 = 256 << 10;
            let mut buf = vec![0u8; CHUNK as usize];
            while left > 0 {
                let n = f.read(&mut buf[..left.min(CHUNK) as usize]).await?;
                if n == 0 {
                    break;
                }
                sink(&buf[..n]).await?;
                left -= n as u64;
            }
            let truncated = offset.saturating_add(want) < size;
            return Ok((size, truncated, None));
        }
        let agent = self.agent(id).await?;
        let mut stream = agent
            .open(&Request::FileRead(FileReadRequest {
                path: path.to_owned(),
                offset,
                max_bytes,
            }))
            .await?;
        loop {
            match stream.next().await? {
                StreamItem::Data(Channel::Stdout, b) => sink(&b).await?,
                StreamItem::Reply(ReplyBody::FileRead {
                    size,
                    truncated,
                    mime,
                    ..
                }) => return Ok((size, truncated, mime)),
                StreamItem::Reply(other) => return Err(unexpected("file_read", &other)),
                _ => {}
            }
        }
    }

    /// Reads lines `offset_lines+1 ..= offset_lines+limit_lines` (all when `limit_lines` is 0)
    /// as text; invalid UTF-8 becomes U+FFFD; `line_numbers` prefixes `N\t` once.
    pub async fn read_text(&self, id: &str, req: FileReadTextRequest) -> Result<TextWindow> {
        match self.file_call(id, Request::FileReadText(req)).await? {
            ReplyBody::Text {
                content,
                total_lines,
                truncated,
            } => Ok(TextWindow {
                content,
                total_lines,
                truncated,
            }),
            other => Err(unexpected("file_read_text", &other)),
        }
    }

    /// Writes (or appends) `bytes` to a file; a replacing write is atomic.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        bytes: &[u8],
        opts: WriteOptions,
    ) -> Result<u64> {
        let mut reader = bytes;
        self.upload(id, path, &mut reader, opts).await
    }

    /// Streams `reader` into a file; returns the bytes written. A replacing write is atomic:
    /// the file changes only when all bytes arrived.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        id: &str,
        path: &str,
        reader: &mut R,
        opts: WriteOptions,
    ) -> Result<u64> {
        let agent = self.agent(id).await?;
        let mut stream = agent
            .open(&Request::FileWrite(FileWriteRequest {
                path: path.to_owned(),
                mode: opts.mode,
                append: opts.append,
                create_parents: opts.create_parents,
            }))
            .await?;
        let sender = stream.sender();
        let send = async {
            let mut buf = vec![0u8; bandsox_protocol::frame::BULK_CHUNK_LEN];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                if sender.send_data(Channel::Stdin, &buf[..n]).await.is_err() {
                    return Ok(false); // the guest answered early (an error); see the reply
                }
            }
            sender.send_eof(Channel::Stdin).await?;
            Ok::<bool, CoreError>(true)
        };
        let recv = single(&mut stream);
        tokio::pin!(send, recv);
        let mut sending = true;
        let reply = loop {
            tokio::select! {
                sent = &mut send, if sending => {
                    sending = false;
                    // A local read error abandons the write (the stream is cancelled on drop,
                    // the guest removes its temporary file).
                    sent?;
                }
                reply = &mut recv => break reply?,
            }
        };
        match reply {
            ReplyBody::Written { bytes, .. } => Ok(bytes),
            other => Err(unexpected("file_write", &other)),
        }
    }

    /// Writes many files in one round trip: `(path, bytes, mode)`.
    pub async fn write_files(
        &self,
        id: &str,
        files: &[(String, Vec<u8>, Option<u32>)],
        create_parents: bool,
    ) -> Result<u64> {
        let agent = self.agent(id).await?;
        let req = FileWriteBatchRequest {
            files: files
                .iter()
                .map(|(path, bytes, mode)| BatchFile {
                    path: path.clone(),
                    size: bytes.len() as u64,
                    mode: *mode,
                })
                .collect(),
            create_parents,
        };
        let mut stream = agent.open(&Request::FileWriteBatch(req)).await?;
        let sender = stream.sender();
        let send = async {
            // Coalesce small files into full frames.
            let mut buf = Vec::with_capacity(bandsox_protocol::frame::BULK_CHUNK_LEN);
            for (_, bytes, _) in files {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let room = bandsox_protocol::frame::BULK_CHUNK_LEN - buf.len();
                    let take = room.min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == bandsox_protocol::frame::BULK_CHUNK_LEN {
                        if sender.send_data(Channel::Stdin, &buf).await.is_err() {
                            return;
                        }
                        buf.clear();
                    }
                }
            }
            if !buf.is_empty() && sender.send_data(Channel::Stdin, &buf).await.is_err() {
                return;
            }
            let _ = sender.send_eof(Channel::Stdin).await;
        };
        let ((), reply) = tokio::join!(send, single(&mut stream));
        match reply? {
            ReplyBody::Written { files, .. } => Ok(files),
            other => Err(unexpected("file_write_batch", &other)),
        }
    }

    /// Entries of a directory, sorted by name; `truncated` when it had more than one reply
    /// carries (20 000). A stopped VM's directory is read from its disks (as BandSox lists
    /// it), without times.
    pub async fn list_dir(&self, id: &str, path: &str) -> Result<(Vec<FileEntry>, bool)> {
        if let Some(layers) = self.offline_layers(id)? {
            let path = path.to_owned();
            let entries = tokio::task::spawn_blocking(move || super::offline::list(&layers, &path))
                .await
                .map_err(|e| CoreError::Io(std::io::Error::other(e)))??;
            return Ok((entries, false));
        }
        let req = Request::FileList {
            path: path.to_owned(),
        };
        match self.file_call(id, req).await? {
            ReplyBody::Entries { entries, truncated } => Ok((entries, truncated)),
            other => Err(unexpected("file_list", &other)),
        }
    }

    /// Metadata of a path; `None` when it does not exist.
    pub async fn stat(&self, id: &str, path: &str) -> Result<Option<FileEntry>> {
        let req = Request::FileStat {
            path: path.to_owned(),
        };
        match self.file_call(id, req).await? {
            ReplyBody::Stat { entry } => Ok(entry),
            other => Err(unexpected("file_stat", &other)),
        }
    }

    /// Whether a path exists.
    pub async fn exists(&self, id: &str, path: &str) -> Result<bool> {
        Ok(self.stat(id, path).await?.is_some())
    }

    /// Creates a directory (`parents`: like `mkdir -p`).
    pub async fn mkdir(
        &self,
        id: &str,
        path: &str,
        parents: bool,
        mode: Option<u32>,
    ) -> Result<()> {
        let req = Request::FileMkdir {
            path: path.to_owned(),
            parents,
            mode,
        };
        expect_done(self.file_call(id, req).await?, "file_mkdir")
    }

    /// Removes a file or directory (`recursive` for a non-empty directory).
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<()> {
        let req = Request::FileRemove {
            path: path.to_owned(),
            recursive,
        };
        expect_done(self.file_call(id, req).await?, "file_remove")
    }

    /// Renames a path.
    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<()> {
        let req = Request::FileRename {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        expect_done(self.file_call(id, req).await?, "file_rename")
    }

    /// Replaces `old`, which must occur exactly once (`no_match` / `multiple_matches`
    /// otherwise), with `new`.
    pub async fn edit_file(&self, id: &str, path: &str, old: &str, new: &str) -> Result<()> {
        let req = Request::FileEdit {
            path: path.to_owned(),
            old: old.to_owned(),
            new: new.to_owned(),
        };
        expect_done(self.file_call(id, req).await?, "file_edit")
    }
}

fn expect_done(body: ReplyBody, op: &str) -> Result<()> {
    match body {
        ReplyBody::Done => Ok(()),
        other => Err(unexpected(op, &other)),
    }
}
