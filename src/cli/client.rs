//! The CLI's client of a running `s3mem serve`: the same commands, over gRPC (`--server URL`).

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use super::command_line::{AskArgs, RetrieveArgs};
use crate::answer::AnswerMode;
use crate::index::{CollectionInfo, DocumentInfo, Stats};
use crate::retrieve::Evidence;
use crate::service::convert::{evidence_from_pb, filter_to_pb, method_to_pb, stats_from_pb};
use crate::service::pb::{self, memory_client::MemoryClient};

/// Text bytes per ingest message: well under the daemon's default 4 MiB message limit.
const PIECE_BYTES: usize = 1 << 20;
/// Most times `ingest --server` sends a document again alone after a refusal for room, and
/// the first wait before it does (doubled each time: 1.5 s in all).
const RESENDS_ALONE: u32 = 4;
const RESEND_WAIT: Duration = Duration::from_millis(100);
/// Largest reply the client accepts (a whole document from GetDocument).
const MAX_REPLY_BYTES: usize = 256 << 20;

use super::args::ServerArgs;

impl ServerArgs {
    /// Connects to the daemon if `--server` was given.
    pub fn connect(&self) -> Result<Option<Client>> {
        self.server
            .as_deref()
            .map(|url| Client::connect(url, self))
            .transpose()
    }
}

/// Sends the bearer token with every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The reply of one `Ingest` call.
type IngestReply = Result<tonic::Response<pb::IngestResponse>, Status>;

/// One document [`Client::ingest_all`] sends: its id (the daemon makes one when `None`), its
/// text and what the progress bar calls it.
pub struct DocumentUpload {
    pub id: Option<String>,
    pub text: String,
    pub label: String,
}

/// What opens `Ingest` calls for one [`Client::ingest_all`].
struct Sender {
    api: MemoryClient<InterceptedService<Channel, Bearer>>,
    collection: String,
    metadata: Vec<pb::MetaEntry>,
    bar: ProgressBar,
}

impl Sender {
    /// Opens a call sending `text` in pieces as the document `id`, on a task of its own.
    fn send(&self, id: Option<String>, text: Arc<Vec<u8>>) -> JoinHandle<IngestReply> {
        let header = pb::IngestRequest {
            part: Some(pb::ingest_request::Part::Header(pb::IngestHeader {
                collection: self.collection.clone(),
                id: id.unwrap_or_default(),
                metadata: self.metadata.clone(),
            })),
        };
        let progress = self.bar.clone();
        let pieces = text_pieces(text, move |n| progress.inc(n as u64));
        let stream = tokio_stream::iter(std::iter::once(header).chain(pieces));
        let mut api = self.api.clone();
        tokio::spawn(async move { api.ingest(stream).await })
    }
}

/// A document of [`Client::ingest_all`] whose call was opened, with what sending it again
/// needs.
struct OpenCall {
    id: Option<String>,
    label: String,
    text: Arc<Vec<u8>>,
    /// Whether other calls of the run were open when it was sent (those sent after it are
    /// the ones behind it in the queue).
    beside_others: bool,
    /// Times it was sent again alone after a refusal for room.
    resends: u32,
    call: Call,
}

/// Where an open call is.
enum Call {
    Open(JoinHandle<IngestReply>),
    Ended(IngestReply),
    /// Between the two, while its end is awaited.
    Taken,
}

impl Call {
    /// Waits for the call's reply (a panic of its task goes on here).
    async fn outcome(self) -> IngestReply {
        match self {
            Call::Open(task) => match task.await {
                Ok(reply) => reply,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(Status::cancelled(format!("the call's task ended: {e}"))),
            },
            Call::Ended(reply) => reply,
            Call::Taken => Err(Status::internal("a call's reply was taken twice")),
        }
    }

    /// Cancels the call if it is still open; returns whether it was.
    fn abort(&self) -> bool {
        match self {
            Call::Open(task) => {
                task.abort();
                true
            }
            _ => false,
        }
    }
}

/// A connection to a daemon, driven from synchronous CLI code.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    api: MemoryClient<InterceptedService<Channel, Bearer>>,
}

/// Returns a CLI error for a status: the daemon's message and the code.
fn status_error(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{} (the daemon answered {:?})", s.message(), s.code())
}

impl Client {
    /// Connects to `url`.
    pub fn connect(url: &str, args: &ServerArgs) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let token = match &args.auth_token_file {
            Some(path) => {
                let token = crate::service::config::read_token(path)?;
                Some(
                    format!("Bearer {token}")
                        .parse::<MetadataValue<Ascii>>()
                        .context("the token is not valid in a header")?,
                )
            }
            None => None,
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("--server {url} is not a URL"))?
            .connect_timeout(Duration::from_secs(10));
        if url.starts_with("https://") {
            let Some(ca) = &args.tls_ca else {
                bail!("--server {url} uses TLS: give the CA certificate with --tls-ca FILE");
            };
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .context("TLS settings")?;
        }
        let channel = runtime
            .block_on(endpoint.connect())
            .with_context(|| format!("cannot connect to the daemon at {url}"))?;
        let api = MemoryClient::with_interceptor(channel, Bearer(token))
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .max_encoding_message_size(MAX_REPLY_BYTES);
        Ok(Self { runtime, api })
    }

    /// Creates a collection unless it exists.
    pub fn ensure_collection(&mut self, name: &str) -> Result<()> {
        let req = pb::CreateCollectionRequest { name: name.into() };
        match self.runtime.block_on(self.api.create_collection(req)) {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(status_error(s)),
        }
    }

    /// Creates a collection.
    pub fn create_collection(&mut self, name: &str) -> Result<()> {
        let req = pb::CreateCollectionRequest { name: name.into() };
        self.runtime
            .block_on(self.api.create_collection(req))
            .map_err(status_error)?;
        Ok(())
    }

    /// Lists the collections.
    pub fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        let r = self
            .runtime
            .block_on(self.api.list_collections(pb::ListCollectionsRequest {}))
            .map_err(status_error)?;
        Ok(r.into_inner()
            .collections
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Drops a collection.
    pub fn drop_collection(&mut self, name: &str) -> Result<()> {
        let req = pb::DropCollectionRequest { name: name.into() };
        self.runtime
            .block_on(self.api.drop_collection(req))
            .map_err(status_error)?;
        Ok(())
    }

    /// Streams `docs` to the daemon, each an `Ingest` call sending its text in pieces, with at
    /// most `in_flight` calls open at once (the daemon can store one document while it scans the
    /// next), and hands each reply to `done` in the documents' order. Two documents with the
    /// same id are never in flight together, so a later one replaces an earlier one as it
    /// would one after the other. A document refused for a full queue or upload buffer while
    /// other calls of this run were open (they may hold the places) is sent again alone once
    /// they have ended, and the run goes on one call at a time. Stops at the first failure:
    /// the documents acknowledged before it stay stored, and the calls still open are
    /// cancelled.
    pub fn ingest_all(
        &mut self,
        collection: &str,
        meta: &[(String, String)],
        docs: Vec<DocumentUpload>,
        in_flight: NonZeroUsize,
        done: &mut dyn FnMut(pb::IngestResponse),
    ) -> Result<()> {
        let total = docs.len();
        let bar = ProgressBar::new(docs.iter().map(|d| d.text.len() as u64).sum()).with_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} sent  {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        let sender = Sender {
            api: self.api.clone(),
            collection: collection.to_string(),
            metadata: meta
                .iter()
                .map(|(key, value)| pb::MetaEntry {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            bar: bar.clone(),
        };
        let out = self.runtime.block_on(async {
            let mut in_flight = in_flight.get();
            let mut open: VecDeque<OpenCall> = VecDeque::new();
            let mut stored = 0;
            let mut docs = docs.into_iter().peekable();
            loop {
                while open.len() < in_flight {
                    let Some(next) = docs.peek() else { break };
                    if next.id.is_some() && open.iter().any(|c| c.id == next.id) {
                        break;
                    }
                    let doc = docs.next().expect("peeked");
                    let text = Arc::new(doc.text.into_bytes());
                    open.push_back(OpenCall {
                        call: Call::Open(sender.send(doc.id.clone(), text.clone())),
                        id: doc.id,
                        label: doc.label,
                        text,
                        beside_others: !open.is_empty(),
                        resends: 0,
                    });
                }
                let Some(mut front) = open.pop_front() else {
                    return Ok(());
                };
                bar.set_message(format!(
                    "{stored} of {total} stored, waiting for {}",
                    front.label
                ));
                let reply = front.call.outcome().await;
                let refused_for_room =
                    matches!(&reply, Err(s) if s.code() == Code::ResourceExhausted);
                // Calls behind it that were open were sent while it was, and any of them may
                // have reached the daemon first (calls already ended were not: a document sent
                // again alone and refused again is refused for others' load).
                let beside_others =
                    front.beside_others || open.iter().any(|c| matches!(c.call, Call::Open(_)));
                if refused_for_room
                    && (beside_others || front.resends > 0)
                    && front.resends < RESENDS_ALONE
                {
                    // This run's own calls may hold the daemon's places: let them end, then
                    // send this document alone and go on one call at a time. A daemon frees a
                    // place just after it answers, so the resend waits a little, longer each
                    // time it is refused again.
                    for c in open.iter_mut() {
                        let ended = std::mem::replace(&mut c.call, Call::Taken).outcome().await;
                        c.call = Call::Ended(ended);
                    }
                    tokio::time::sleep(RESEND_WAIT * (1 << front.resends)).await;
                    bar.inc_length(front.text.len() as u64);
                    front.call = Call::Open(sender.send(front.id.clone(), front.text.clone()));
                    front.beside_others = false;
                    front.resends += 1;
                    open.push_front(front);
                    in_flight = 1;
                    continue;
                }
                match reply {
                    Ok(reply) => {
                        stored += 1;
                        done(reply.into_inner());
                    }
                    Err(status) => {
                        let still_open = open.iter().filter(|c| c.call.abort()).count();
                        return Err(status_error(status).context(format!(
                            "ingesting {} ({stored} of {total} documents stored before it; \
                             {still_open} calls still open were cancelled, and a document whose \
                             store had begun may be stored: `docs list` shows)",
                            front.label
                        )));
                    }
                }
            }
        });
        bar.finish_and_clear();
        out
    }

    /// Streams a snapshot of the daemon's data dir into the file `out`, through a temporary
    /// file beside it: `out` appears only when the daemon ended the stream with OK.
    pub fn snapshot(&mut self, out: &std::path::Path) -> Result<()> {
        let mut stream = self
            .runtime
            .block_on(self.api.create_snapshot(pb::CreateSnapshotRequest {}))
            .map_err(status_error)?
            .into_inner();
        let runtime = &self.runtime;
        crate::durable::write_atomic_with(out, |file| {
            use std::io::Write;
            while let Some(chunk) = runtime
                .block_on(stream.message())
                .map_err(|s| std::io::Error::other(status_error(s)))?
            {
                file.write_all(&chunk.data)?;
            }
            Ok(())
        })
        .with_context(|| format!("writing the snapshot to {}", out.display()))
    }

    /// Lists a collection's documents, page after page.
    pub fn documents(&mut self, collection: &str) -> Result<Vec<DocumentInfo>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let (docs, next) = self.documents_page(collection, 0, &token)?;
            all.extend(docs);
            match next {
                Some(next) => token = next,
                None => return Ok(all),
            }
        }
    }

    /// Lists one page of a collection's documents (`page_size` 0: the daemon's most) from
    /// `page_token` (empty: the first); returns them and the next page's token, if any.
    pub fn documents_page(
        &mut self,
        collection: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<DocumentInfo>, Option<String>)> {
        let req = pb::ListDocumentsRequest {
            collection: collection.into(),
            page_size,
            page_token: page_token.into(),
        };
        let r = self
            .runtime
            .block_on(self.api.list_documents(req))
            .map_err(status_error)?
            .into_inner();
        let next = (!r.next_page_token.is_empty()).then_some(r.next_page_token);
        Ok((r.documents.into_iter().map(Into::into).collect(), next))
    }

    /// Returns a document's record and text (or a char range of it).
    pub fn document(
        &mut self,
        collection: &str,
        id: &str,
        chars: Option<std::ops::Range<usize>>,
    ) -> Result<(DocumentInfo, String)> {
        let req = pb::GetDocumentRequest {
            collection: collection.into(),
            id: id.into(),
            chars: chars.map(|r| pb::CharRange {
                start: r.start as u64,
                end: r.end as u64,
            }),
        };
        let r = self
            .runtime
            .block_on(self.api.get_document(req))
            .map_err(status_error)?
            .into_inner();
        let info = r
            .document
            .context("the daemon's reply lacks the document record")?;
        Ok((info.into(), r.text))
    }

    /// Deletes a document.
    pub fn delete(&mut self, collection: &str, id: &str) -> Result<()> {
        let req = pb::DeleteDocumentRequest {
            collection: collection.into(),
            id: id.into(),
        };
        self.runtime
            .block_on(self.api.delete_document(req))
            .map_err(status_error)?;
        Ok(())
    }

    /// Retrieves evidence; returns it with its trace (as JSON) when one was asked for.
    pub fn retrieve(
        &mut self,
        args: &RetrieveArgs,
    ) -> Result<(Evidence, Option<serde_json::Value>)> {
        let r = self
            .runtime
            .block_on(self.api.retrieve(retrieve_request(args)))
            .map_err(status_error)?;
        Ok(evidence_from_pb(r.into_inner())?)
    }

    /// Asks a question: `on_text` gets the answer's pieces as they come; returns the evidence,
    /// its trace and the final message.
    pub fn ask(
        &mut self,
        ask: &AskArgs,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Evidence, Option<serde_json::Value>, pb::AskResult)> {
        let r = retrieve_request(&ask.retrieve);
        let req = pb::AskRequest {
            collection: r.collection,
            docs: r.docs,
            question: r.question,
            budget: r.budget,
            method: r.method,
            trace: r.trace,
            max_new_tokens: u32::try_from(ask.max_new_tokens).unwrap_or(u32::MAX),
            answer_model: ask.answer.answer_model.clone().unwrap_or_default(),
            answer_mode: ask
                .answer_mode
                .map_or(pb::AnswerMode::Unspecified, |m| match m {
                    AnswerMode::Free => pb::AnswerMode::Free,
                    AnswerMode::Quote => pb::AnswerMode::Quote,
                    AnswerMode::Auto => pb::AnswerMode::Auto,
                }) as i32,
            filter: r.filter,
        };
        let api = &mut self.api;
        self.runtime.block_on(async {
            let mut stream = api.ask(req).await.map_err(status_error)?.into_inner();
            let mut evidence = None;
            while let Some(msg) = stream.message().await.map_err(status_error)? {
                match msg.event {
                    Some(pb::ask_response::Event::Evidence(e)) => {
                        evidence = Some(evidence_from_pb(e)?);
                    }
                    Some(pb::ask_response::Event::Delta(piece)) if !on_text(&piece) => {
                        bail!("cancelled");
                    }
                    Some(pb::ask_response::Event::Delta(_)) | None => {}
                    Some(pb::ask_response::Event::Done(done)) => {
                        let (e, trace) =
                            evidence.context("the daemon answered before sending evidence")?;
                        return Ok((e, trace, done));
                    }
                }
            }
            bail!("the daemon ended the answer without its final message")
        })
    }

    /// Counts and sizes the daemon's data dir.
    pub fn stats(&mut self) -> Result<Stats> {
        let r = self
            .runtime
            .block_on(self.api.stats(pb::StatsRequest {}))
            .map_err(status_error)?;
        Ok(stats_from_pb(r.into_inner()))
    }
}

fn retrieve_request(args: &RetrieveArgs) -> pb::RetrieveRequest {
    pb::RetrieveRequest {
        collection: args.collection.clone(),
        docs: args.docs.clone(),
        question: args.question.clone(),
        // An over-large budget stays over the daemon's limit, which refuses it by name.
        budget: u32::try_from(args.budget).unwrap_or(u32::MAX),
        method: method_to_pb(args.method) as i32,
        trace: args.trace,
        filter: args.filter.as_ref().map(filter_to_pb),
    }
}

/// Returns the text messages of an ingest: `bytes` cut into pieces, `sent` called with each
/// piece's size as the transport takes it.
fn text_pieces(
    bytes: Arc<Vec<u8>>,
    mut sent: impl FnMut(usize) + Send + 'static,
) -> impl Iterator<Item = pb::IngestRequest> + Send + 'static {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= bytes.len() {
            return None;
        }
        let end = (offset + PIECE_BYTES).min(bytes.len());
        let piece = bytes[offset..end].to_vec();
        offset = end;
        sent(piece.len());
        Some(pb::IngestRequest {
            part: Some(pb::ingest_request::Part::Text(piece)),
        })
    })
}
