//! `vbs write` and `vbs read`: whole blocks between a volume and a file or stdin/stdout,
//! streamed in chunks with a few chunks in flight.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

use client::managers::Managers;
use client::types::BLOCK_BYTES;
use client::volume::{ClientError, Volume, VolumeOptions};

/// Bytes per chunk, and chunks in flight: 16 MiB of buffers, enough to keep every request slot
/// of a few slices busy.
const CHUNK_BYTES: u64 = 4 << 20;
const CHUNKS_IN_FLIGHT: usize = 4;

#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// Volume name
    #[arg(value_parser = super::volume_name)]
    name: String,
    /// Where to write, a multiple of 4k
    #[arg(long, value_parser = super::size)]
    offset: u64,
    /// The data; stdin when not given. Its length must be a multiple of 4096.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Volume name
    #[arg(value_parser = super::volume_name)]
    name: String,
    /// Where to read from, a multiple of 4k
    #[arg(long, value_parser = super::size)]
    pub offset: u64,
    /// How much to read, a multiple of 4k
    #[arg(long, value_parser = super::size)]
    pub length: u64,
    /// Where to put the data; stdout when not given
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn open(managers: Arc<Managers>, name: &str) -> anyhow::Result<Arc<Volume>> {
    let volume = Volume::open(managers, name, VolumeOptions::default()).await?;
    Ok(Arc::new(volume))
}

pub async fn write(managers: Arc<Managers>, args: WriteArgs) -> anyhow::Result<()> {
    let volume = open(managers, &args.name).await?;
    let geometry = volume.geometry();
    let (input, what): (Box<dyn AsyncRead + Unpin + Send>, String) = match &args.file {
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let len = file.metadata().await?.len();
            check_input_length(&path.display().to_string(), len)?;
            geometry.check(volume.name(), args.offset, len)?;
            (Box::new(file), path.display().to_string())
        }
        None => {
            geometry.check(volume.name(), args.offset, 0)?;
            (Box::new(tokio::io::stdin()), "stdin".into())
        }
    };
    let written = copy_in(&volume, input, &what, args.offset).await?;
    volume
        .flush()
        .await
        .context("flushing the volume after writing")?;
    println!(
        "wrote {written} bytes to volume {} at offset {}",
        volume.name(),
        args.offset
    );
    Ok(())
}

fn check_input_length(what: &str, len: u64) -> anyhow::Result<()> {
    if len % BLOCK_BYTES != 0 {
        bail!(
            "{what} is {len} bytes, not a multiple of {BLOCK_BYTES}: volumes are written in whole \
             {BLOCK_BYTES}-byte blocks (pad it, e.g. `truncate -s %{BLOCK_BYTES} FILE`)"
        );
    }
    Ok(())
}

/// Writes everything `input` gives at `offset`, chunk by chunk. Returns the bytes written.
async fn copy_in(
    volume: &Arc<Volume>,
    mut input: impl AsyncRead + Unpin,
    what: &str,
    offset: u64,
) -> anyhow::Result<u64> {
    let mut writes = JoinSet::new();
    let mut position = 0u64;
    loop {
        let chunk = read_chunk(&mut input)
            .await
            .with_context(|| format!("reading {what}"))?;
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len() as u64;
        if len % BLOCK_BYTES != 0 {
            join_all(&mut writes).await?;
            check_input_length(what, position + len)
                .with_context(|| format!("the first {position} bytes were written"))?;
        }
        if let Err(error) = volume
            .geometry()
            .check(volume.name(), offset + position, len)
        {
            join_all(&mut writes).await?;
            return Err(error).with_context(|| format!("after writing {position} bytes"));
        }
        if writes.len() >= CHUNKS_IN_FLIGHT {
            join_next(&mut writes).await?;
        }
        let volume = volume.clone();
        let at = offset + position;
        writes.spawn(async move { volume.write(at, chunk).await });
        position += len;
    }
    join_all(&mut writes).await?;
    Ok(position)
}

/// Up to [`CHUNK_BYTES`] from `input`, shorter only at its end.
async fn read_chunk(input: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES as usize);
    while (buf.len() as u64) < CHUNK_BYTES {
        if input.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

async fn join_next(writes: &mut JoinSet<Result<(), ClientError>>) -> anyhow::Result<()> {
    if let Some(done) = writes.join_next().await {
        done.context("a write task failed")??;
    }
    Ok(())
}

async fn join_all(writes: &mut JoinSet<Result<(), ClientError>>) -> anyhow::Result<()> {
    while !writes.is_empty() {
        join_next(writes).await?;
    }
    Ok(())
}

pub async fn read(managers: Arc<Managers>, args: ReadArgs) -> anyhow::Result<()> {
    let volume = open(managers, &args.name).await?;
    volume
        .geometry()
        .check(volume.name(), args.offset, args.length)?;
    let output: Box<dyn AsyncWrite + Unpin + Send> = match &args.out {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let what = args
        .out
        .as_ref()
        .map_or("stdout".to_string(), |p| p.display().to_string());
    match copy_out(&volume, args.offset, args.length, output).await {
        Ok(()) => Ok(()),
        // The reader went away (`vbs read ... | head`): it has what it wanted.
        Err(CopyOutError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(CopyOutError::Output(e)) => Err(e).with_context(|| format!("writing to {what}")),
        Err(CopyOutError::Volume(e)) => Err(e),
    }
}

enum CopyOutError {
    Volume(anyhow::Error),
    Output(std::io::Error),
}

/// Reads `length` bytes at `offset` into `output`, in order, with a few chunks read ahead.
async fn copy_out(
    volume: &Arc<Volume>,
    offset: u64,
    length: u64,
    mut output: impl AsyncWrite + Unpin,
) -> Result<(), CopyOutError> {
    let mut pending = VecDeque::new();
    let mut next = 0u64;
    loop {
        while next < length && pending.len() < CHUNKS_IN_FLIGHT {
            let len = CHUNK_BYTES.min(length - next);
            let volume = volume.clone();
            let at = offset + next;
            pending.push_back(tokio::spawn(async move { volume.read(at, len).await }));
            next += len;
        }
        let Some(chunk) = pending.pop_front() else {
            break;
        };
        let data = chunk
            .await
            .map_err(|e| CopyOutError::Volume(e.into()))?
            .map_err(|e| CopyOutError::Volume(e.into()))?;
        output
            .write_all(&data)
            .await
            .map_err(CopyOutError::Output)?;
    }
    output.flush().await.map_err(CopyOutError::Output)
}
