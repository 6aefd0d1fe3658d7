//! `openshell-copier`: installs a checksum-verified `openshell-sandbox` into the volume an
//! OpenShell agent container runs it from, so that container sees no binary, the previous complete
//! one, or the new complete verified one, and never a partial or tampered file.
//!
//! `main` only parses, calls [`run`] and prints one line; everything else lives here so it can be
//! unit tested. Modules, in the order a run uses them: [`args`] → [`expected`] (pin and
//! [`manifest`]) → [`install`] (via [`dir`], [`temp`], [`copy`], [`digest`]) → [`log`].

pub mod args;
pub mod copy;
pub mod digest;
pub mod dir;
pub mod error;
pub mod expected;
pub mod install;
pub mod log;
pub mod manifest;
pub mod temp;
#[cfg(test)]
mod testutil;

pub use error::Error;

/// Works out the expected digest and installs the source at the destination.
pub fn run(options: &args::Options) -> Result<install::Report, Error> {
    let expected = expected::resolve(
        options.pin,
        &options.manifest,
        options.manifest_given,
        &options.source,
    )?;
    install::install(&options.source, &options.dest, &expected)
}
