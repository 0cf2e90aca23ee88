//! The engine on its own thread, driven from async code.
//!
//! [`Engine`] is synchronous: a step is one batched forward pass that keeps both cores busy
//! for milliseconds. [`EngineHost`] owns it on a dedicated OS thread that admits new requests
//! between steps and forwards each request's tokens to an async channel, so the worker's
//! network and chain tasks never block on the model, and requests from many jobs share every
//! step.
//!
//! A caller that drops its receiver cancels its request: before every step the thread looks
//! for closed receivers and takes their requests out of the engine, so nothing more is
//! computed for a caller that went away. A step that fails fails only the requests in it;
//! the thread goes on serving the others and new ones.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc as async_mpsc, oneshot};

use openledger_engine::{
    ActivationCommitment, Engine, EngineError, EngineStatus, GenerationRequest, RequestId,
    SamplingParams, StreamEvent, Tolerance, VerifyReport,
};

enum Command {
    Generate {
        request: GenerationRequest,
        events: async_mpsc::UnboundedSender<StreamEvent>,
        /// The prompt's token count once the engine has accepted the request.
        accepted: oneshot::Sender<Result<Vec<u32>, EngineError>>,
    },
    RegisterAdapter {
        name: String,
        dir: PathBuf,
        done: oneshot::Sender<Result<(), EngineError>>,
    },
    Adapters {
        reply: oneshot::Sender<AdapterTiers>,
    },
    Status {
        reply: oneshot::Sender<EngineStatus>,
    },
    Verify {
        prompt: Vec<u32>,
        output: Vec<u32>,
        adapter: Option<String>,
        claimed: ActivationCommitment,
        tolerance: Tolerance,
        replay: Option<SamplingParams>,
        events: async_mpsc::UnboundedSender<StreamEvent>,
        accepted: oneshot::Sender<Result<(), EngineError>>,
    },
    FailNextStep,
}

/// Which adapters each cache tier holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdapterTiers {
    /// Installed for compute (GPU memory on a CUDA worker, the SGMV tables on CPU).
    pub compute: Vec<String>,
    /// Parsed in host memory.
    pub host: Vec<String>,
}

/// What the engine thread last did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Sequences in the last step.
    pub batch: usize,
    /// Requests waiting for admission after it.
    pub waiting: usize,
}

/// A handle to the engine thread. Cloning it shares the engine; the thread ends when the
/// last handle is dropped and the running requests have finished.
#[derive(Clone)]
pub struct EngineHost {
    commands: mpsc::Sender<Command>,
    load: Arc<Mutex<EngineLoad>>,
    /// The bounds a verification on this engine is judged by: those fitted to its model's
    /// numeric format.
    tolerance: Tolerance,
}

/// What [`EngineHost`] calls return when the engine thread is gone.
fn gone() -> EngineError {
    EngineError::Stopped
}

impl EngineHost {
    /// Move `engine` onto its own thread.
    pub fn spawn(engine: Engine) -> (Self, JoinHandle<()>) {
        let (commands, inbox) = mpsc::channel();
        let load = Arc::new(Mutex::new(EngineLoad::default()));
        let shared = Arc::clone(&load);
        let tolerance = Tolerance::for_format(engine.model().numeric_format().general());
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(engine, inbox, shared))
            .unwrap_or_else(|e| panic!("cannot start the engine thread: {e}"));
        (Self { commands, load, tolerance }, thread)
    }

    /// The bounds a verification on this engine is judged by ([`Tolerance::for_format`] of
    /// its model's numeric format, in general: the host format's for the VNNI / AMX path,
    /// unless [`Self::with_tolerance`] set others): pass them to
    /// [`Self::verify`] and to [`VerifyReport::passes`].
    pub fn tolerance(&self) -> Tolerance {
        self.tolerance
    }

    /// Judges this engine's verifications by `tolerance` (the worker: that of the format
    /// its base model id is registered in, `base_model::audit_tolerance`).
    pub fn with_tolerance(self, tolerance: Tolerance) -> Self {
        Self { tolerance, ..self }
    }

    /// Queue a request; its tokens arrive on the returned channel, ending with
    /// [`StreamEvent::Finished`] or [`StreamEvent::Failed`]. A request the engine refuses
    /// returns its error here, before anything runs: [`EngineError::rejection`] says whether
    /// the request itself is at fault. Dropping the receiver cancels the request before the
    /// engine's next step.
    pub async fn generate(
        &self,
        request: GenerationRequest,
    ) -> Result<async_mpsc::UnboundedReceiver<StreamEvent>, EngineError> {
        Ok(self.generate_counted(request).await?.1)
    }

    /// [`Self::generate`], also returning the prompt's token ids (their count is what a
    /// receipt charges as input even when the request is cancelled before it finishes).
    pub async fn generate_counted(
        &self,
        request: GenerationRequest,
    ) -> Result<(Vec<u32>, async_mpsc::UnboundedReceiver<StreamEvent>), EngineError> {
        let (events, rx) = async_mpsc::unbounded_channel();
        let (accepted, answer) = oneshot::channel();
        self.commands.send(Command::Generate { request, events, accepted }).map_err(|_| gone())?;
        let prompt_tokens = answer.await.map_err(|_| gone())??;
        Ok((prompt_tokens, rx))
    }

    /// Recompute the activations of an answer (`prompt` then `output` token ids, with
    /// `adapter`) in prefill passes batched with the running requests, and compare them with
    /// `claimed`, replaying the request's sampling when `replay` gives it (see
    /// [`Engine::submit_verification`]).
    pub async fn verify(
        &self,
        prompt: Vec<u32>,
        output: Vec<u32>,
        adapter: Option<String>,
        claimed: ActivationCommitment,
        tolerance: Tolerance,
        replay: Option<SamplingParams>,
    ) -> Result<VerifyReport, EngineError> {
        let (events, mut rx) = async_mpsc::unbounded_channel();
        let (accepted, answer) = oneshot::channel();
        let command = Command::Verify {
            prompt,
            output,
            adapter,
            claimed,
            tolerance,
            replay,
            events,
            accepted,
        };
        self.commands.send(command).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())??;
        while let Some(event) = rx.recv().await {
            match event {
                StreamEvent::Verified(report) => return Ok(report),
                StreamEvent::Failed(message) => return Err(EngineError::Backend(message)),
                _ => {},
            }
        }
        Err(gone())
    }

    /// Register a PEFT adapter directory under `name` (validated on the engine thread).
    pub async fn register_adapter(&self, name: &str, dir: PathBuf) -> Result<(), EngineError> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::RegisterAdapter { name: name.to_string(), dir, done })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// The adapters each cache tier holds now.
    pub async fn adapters(&self) -> AdapterTiers {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Adapters { reply }).is_err() {
            return AdapterTiers::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Requests, KV blocks and adapter pins the engine holds now, and steps run so far.
    pub async fn status(&self) -> Result<EngineStatus, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Status { reply }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }

    /// Makes the engine's next forward pass fail (fault injection, for tests of the failure
    /// path; see [`Engine::fail_next_step`]).
    #[doc(hidden)]
    pub fn fail_next_step(&self) {
        let _ = self.commands.send(Command::FailNextStep);
    }

    /// Batch size and queue depth of the last step.
    pub fn load(&self) -> EngineLoad {
        self.load.lock().map(|l| *l).unwrap_or_default()
    }
}

/// One request's engine channel and where its events go.
struct Forward {
    id: RequestId,
    from: Receiver<StreamEvent>,
    to: async_mpsc::UnboundedSender<StreamEvent>,
}

impl Forward {
    /// Pass on what arrived; false once the request is over.
    fn pump(&self) -> bool {
        loop {
            match self.from.try_recv() {
                Ok(event) => {
                    let last = matches!(
                        event,
                        StreamEvent::Finished { .. }
                            | StreamEvent::Failed(_)
                            | StreamEvent::Verified(_)
                    );
                    // A caller that went away is cancelled before the next step.
                    let _ = self.to.send(event);
                    if last {
                        return false;
                    }
                },
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }
}

fn handle(engine: &mut Engine, forwards: &mut Vec<Forward>, command: Command) {
    match command {
        Command::Generate { request, events, accepted } => {
            match engine.tokenize(&request.prompt).and_then(|tokens| {
                let prompt = tokens.clone();
                engine.submit_tokens(tokens, request.adapter, request.params).map(|r| (prompt, r))
            }) {
                Ok((n, (id, from))) => {
                    forwards.push(Forward { id, from, to: events });
                    let _ = accepted.send(Ok(n));
                },
                Err(e) => {
                    let _ = accepted.send(Err(e));
                },
            }
        },
        Command::Verify {
            prompt,
            output,
            adapter,
            claimed,
            tolerance,
            replay,
            events,
            accepted,
        } => {
            match engine.submit_verification(&prompt, &output, adapter, claimed, tolerance, replay)
            {
                Ok((id, from)) => {
                    forwards.push(Forward { id, from, to: events });
                    let _ = accepted.send(Ok(()));
                },
                Err(e) => {
                    let _ = accepted.send(Err(e));
                },
            }
        },
        Command::RegisterAdapter { name, dir, done } => {
            let _ = done.send(engine.register_adapter(&name, &dir));
        },
        Command::Adapters { reply } => {
            let cache = engine.adapters();
            let tiers = AdapterTiers {
                compute: cache.resident().into_iter().flatten().map(str::to_string).collect(),
                host: cache.host_resident().into_iter().map(str::to_string).collect(),
            };
            let _ = reply.send(tiers);
        },
        Command::Status { reply } => {
            let _ = reply.send(engine.status());
        },
        Command::FailNextStep => engine.fail_next_step(),
    }
}

/// Takes the requests whose callers dropped their receivers out of the engine.
fn cancel_abandoned(engine: &mut Engine, forwards: &mut Vec<Forward>) {
    forwards.retain(|f| {
        if !f.to.is_closed() {
            return true;
        }
        if engine.cancel(f.id) {
            tracing::debug!(request = f.id, "caller went away; request cancelled");
        }
        false
    });
}

fn run(mut engine: Engine, inbox: Receiver<Command>, load: Arc<Mutex<EngineLoad>>) {
    let mut forwards: Vec<Forward> = Vec::new();
    loop {
        if engine.is_idle() && forwards.is_empty() {
            match inbox.recv() {
                Ok(command) => handle(&mut engine, &mut forwards, command),
                Err(_) => return,
            }
        }
        while let Ok(command) = inbox.try_recv() {
            handle(&mut engine, &mut forwards, command);
        }
        cancel_abandoned(&mut engine, &mut forwards);
        if !engine.is_idle() {
            match engine.step() {
                Ok(report) => {
                    if let Ok(mut l) = load.lock() {
                        *l = EngineLoad { batch: report.sequences, waiting: report.waiting };
                    }
                },
                // The engine has failed and removed the step's requests (their Failed events
                // are forwarded below); the others carry on.
                Err(e) => tracing::error!(error = %e, "engine step failed; failed its requests"),
            }
        } else if let Ok(mut l) = load.lock() {
            *l = EngineLoad::default();
        }
        forwards.retain(Forward::pump);
    }
}
