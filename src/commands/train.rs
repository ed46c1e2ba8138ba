//! `muse train`: a new run from a model file and the run configuration's flags
//! (`muse_train::config::TrainArgs`, defined once), or `--resume RUN_DIR`.

use super::cli::{fail, write_stdout, DeviceArg};
use clap::parser::ValueSource;
use clap::ArgMatches;
use muse_train::config::TrainArgs;
use muse_train::objective::Start;
use std::path::PathBuf;
use std::process::ExitCode;

/// What `muse train` takes.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The .muse file (omit with --resume).
    pub file: Option<PathBuf>,
    /// Continue the run in this directory exactly where its last checkpoint left it (only
    /// --steps, to change its length, and --device may be given with it).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// With --resume: continue although the .muse file changed since the run recorded it
    /// (both sources are kept in config.json).
    #[arg(long, requires = "resume")]
    pub allow_changed_source: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub config: TrainArgs,
}

/// Trains, or continues a run; `m` tells which flags the user gave.
pub fn main(a: Args, m: &ArgMatches) -> ExitCode {
    // Under mpirun, rank 0 speaks for the run.
    let quiet = muse_runtime::dist::mpi::launched_rank().is_some_and(|r| r > 0);
    match train_command(a, m) {
        Ok(_) if quiet => ExitCode::SUCCESS,
        Ok(t) => write_stdout(&t),
        Err(e) => fail(e),
    }
}

/// The flags of `muse train` given on the command line, as the user spelled them.
fn given_flags(m: &ArgMatches) -> Vec<(String, String)> {
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("train"));
    // Argument groups (one per flattened struct) have ids too: only arguments count.
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|id| {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id)?;
            let flag = arg.get_long().map_or_else(|| id.to_string(), |l| format!("--{l}"));
            Some((id.to_string(), flag))
        })
        .collect()
}

fn train_command(a: Args, m: &ArgMatches) -> Result<String, String> {
    let given = given_flags(m);
    let steps_given = given.iter().any(|(id, _)| id == "steps");
    let (args, resume) = match (a.resume, a.file) {
        (Some(run), None) => {
            // A resumed run is the run its config.json describes; only its length may change.
            let ignored: Vec<&str> = given
                .iter()
                .filter(|(id, _)| !matches!(id.as_str(), "resume" | "steps" | "device" | "allow_changed_source"))
                .map(|(_, flag)| flag.as_str())
                .collect();
            if !ignored.is_empty() {
                return Err(format!(
                    "--resume continues {} with the settings in its config.json; only --steps (its length) and --device may be given, not {}",
                    run.display(),
                    ignored.join(", ")
                ));
            }
            let mut args = TrainArgs::from_run(&run)?;
            if steps_given {
                args.steps = a.config.steps;
                if let Some(last) = args.stages.last_mut() {
                    last.until = a.config.steps;
                }
            }
            (args, Start::Resume { allow_changed_source: a.allow_changed_source })
        }
        (Some(run), Some(file)) => {
            return Err(format!(
                "give a model file to start a run or --resume to continue one, not both ({} and --resume {})",
                file.display(),
                run.display()
            ))
        }
        (None, Some(model)) => (TrainArgs { model, ..a.config }.finish(steps_given), Start::New),
        (None, None) => return Err("give a .muse file to train, or --resume RUN_DIR".into()),
    };
    let device = a.device.open(false)?;
    let s = muse_train::objective::train(&args, resume, device.as_ref())?;
    if s.first_loss.is_nan() {
        return Ok(format!(
            "{}: the run has finished its {} steps (--resume {} --steps N continues it to N)\n",
            args.out.display(),
            args.steps,
            args.out.display()
        ));
    }
    let unreadable = match s.unreadable {
        0 => String::new(),
        n => {
            format!(", {n} unreadable images skipped (listed in {})", args.out.join(muse_train::run::SKIPPED).display())
        }
    };
    Ok(format!(
        "trained {}: loss {:.4} -> {:.4}, {:.1} images/s, {:.1}% of the time waiting for data, {} steps skipped{unreadable}; run in {}\n",
        args.model.display(),
        s.first_loss,
        s.last_loss,
        s.items_per_s,
        100.0 * s.wait_fraction,
        s.skipped_steps,
        args.out.display()
    ))
}
