//! One supervisor actor per live publish. Ingest hands it packets through a bounded channel
//! (back-pressure reaches the broadcaster's TCP window) and uplink estimates through a watch
//! channel. The actor starts on a provisional ladder, re-plans from the measured source
//! bitrate after a short measurement and whenever it moves persistently (hysteresis), runs
//! the transcode pipeline, watches its bus, and on the broadcaster's end, a pipeline error
//! or shutdown, drains the pipeline and ends the session in the packager. A new plan takes
//! effect on the next source keyframe as a new Period that starts exactly where the last
//! one ended. A failing stream is torn down alone. With `package.hold_last_frame`, a
//! broadcaster that drops is held: the actor keeps the Period going and its next publish
//! continues it.
//!
//! - `handle.rs`: what ingest holds ([`StreamHandle`], [`EndSignal`]) and what every actor
//!   gets ([`StreamServices`], [`StreamConfig`]);
//! - `actor.rs`: [`spawn`], the actor's loop and what each packet does;
//! - `plan.rs`: which ladder, and admission;
//! - `session.rs`: starting, cutting and stopping pipeline sessions;
//! - `hold.rs`: a stream held through its dropped broadcaster's reconnect;
//! - `clock.rs`, `registry.rs`, `status.rs`, `overload.rs`: media time, who publishes what,
//!   what the API shows, the host's safety net.

mod actor;
pub mod clock;
mod handle;
mod hold;
pub mod overload;
mod plan;
pub mod registry;
mod session;
pub mod status;

pub use actor::spawn;
pub use handle::{EndSignal, StreamConfig, StreamEnd, StreamHandle, StreamServices};
pub use registry::{AlreadyPublishing, PublishClaim, SharedStatus, StreamRegistry};
