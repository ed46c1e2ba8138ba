//! `muse train` end to end on the built-in data at tiny configs: an image tokenizer, then
//! masked-token models on its tokens; resume equivalence; damaged checkpoints.

mod common;

use muse_runtime::device::{Device, DeviceKind, DeviceOptions};
use muse_runtime::select;
use muse_train::config::TrainArgs;
use muse_train::error::Error;
use muse_train::eval::frechet::frechet_distance;
use muse_train::eval::table::{markdown, plots, RunSummary};
use muse_train::eval::{EvalArgs, Prompts};
use muse_train::objective::{train, Start};
use muse_train::sample::{Decoding, SampleArgs};
use muse_train::trained::{Pick, TrainedTokenModel, Weights};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The CPU device with quick compiles and a kernel cache of this test process.
fn settings() -> Box<dyn Device + Send + Sync> {
    let opts = DeviceOptions {
        cache_dir: Some(std::env::temp_dir().join(format!("muse-test-e2e-{}", std::process::id()))),
        quick: true,
        ..DeviceOptions::default()
    };
    select(DeviceKind::Cpu, &opts).unwrap().device
}

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(format!("{name}.muse"))
}

fn sets(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(k, x)| (k.to_string(), x.to_string())).collect()
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muse-e2e-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// A small image tokenizer trained on 8x8 shapes (grid 4, 32 codes).
fn vq(dir: &Path) -> TrainArgs {
    TrainArgs {
        model: model("vq_tokenizer"),
        sets: sets(&[
            ("resolution", "8"),
            ("channels", "8"),
            ("levels", "1"),
            ("codebook", "32"),
            ("code_dim", "8"),
            ("groups", "2"),
        ]),
        steps: 30,
        batch: 8,
        out: dir.join("vq"),
        lr: 3e-3,
        warmup: 5,
        checkpoint_every: 10,
        ..TrainArgs::default()
    }
}

fn masked(name: &str, dir: &Path, steps: u64) -> TrainArgs {
    let mut s = vec![
        ("dim", "32"),
        ("depth", "2"),
        ("heads", "2"),
        ("text_depth", "1"),
        ("text_vocab", "64"),
        ("text_len", "12"),
    ];
    if name.starts_with("mamba") {
        s.push(("d_state", "4"));
    }
    TrainArgs {
        model: model(name),
        sets: sets(&s),
        steps,
        batch: 16,
        out: dir.join(name),
        lr: 3e-3,
        warmup: 10,
        tokenizer: Some(dir.join("vq")),
        samples: 256,
        checkpoint_every: 10,
        ..TrainArgs::default()
    }
}

#[test]
fn masked_token_models_learn_the_built_in_data() {
    let dir = scratch("learn");
    let s = settings();
    let v = train(&vq(&dir), Start::New, s.as_ref()).unwrap();
    assert!(v.last_loss < v.first_loss, "image tokenizer: {} -> {}", v.first_loss, v.last_loss);
    // Its reconstructions of one-shape images, judged (what `muse tokenize` reports).
    let tokenizer = muse_train::image_tokenizer::ImageTokenizer::open(&dir.join("vq")).unwrap();
    let shapes = muse_train::data::open("shapes", 8, 0, false).unwrap();
    let r = tokenizer.judge_reconstructions(shapes.as_ref(), 40, s.as_ref()).unwrap();
    assert_eq!(r.judged(), 40);
    assert!(r.one.1 > 10 && r.two.1 > 5 && r.attributes.iter().all(|&(right, n)| right <= n), "{r:?}");
    for name in ["muse_small", "mamba_xattn_xz"] {
        train(&masked(name, &dir, 150), Start::New, s.as_ref()).unwrap();
        let l = common::losses(&dir.join(name));
        let first = l[..5].iter().sum::<f64>() / 5.0;
        let last = l[l.len() - 10..].iter().sum::<f64>() / 10.0;
        assert!(last < 0.6 * first, "{name}: masked-token loss {first:.3} -> {last:.3}");
    }
    // A token critic on mamba_xattn_xz's fills; its BCE starts near ln 2 and falls.
    let critic = TrainArgs {
        model: model("token_critic"),
        tokenizer: None,
        generator: Some(dir.join("mamba_xattn_xz")),
        out: dir.join("critic"),
        steps: 40,
        ..masked("token_critic", &dir, 40)
    };
    let c = train(&critic, Start::New, s.as_ref()).unwrap();
    assert!(c.last_loss < c.first_loss, "critic: {} -> {}", c.first_loss, c.last_loss);
    // Sampling is a function of the seed, with and without the critic.
    let sample_in = |seed: u64, critic: Option<PathBuf>, out: &str, batch: usize| {
        let a = SampleArgs {
            run: dir.join("mamba_xattn_xz"),
            prompts: vec!["a large red circle in the center".into(), "a blue square on the left".into()],
            decoding: Decoding { steps: 6, seed, ..Decoding::default() },
            out: dir.join(out),
            critic,
            batch,
            pick: Default::default(),
        };
        let files = muse_train::sample::sample(&a, s.as_ref()).unwrap();
        assert_eq!(files.len(), 3, "two images and the grid");
        let img = image::open(&files[0]).unwrap();
        assert_eq!((img.width(), img.height()), (8, 8));
        std::fs::read(dir.join(out).join("grid.png")).unwrap()
    };
    let sample = |seed: u64, critic: Option<PathBuf>, out: &str| sample_in(seed, critic, out, 1);
    // An image is a function of the seed and its index, whatever the batch.
    assert_eq!(sample(1, None, "s1"), sample_in(1, None, "s1b", 2));
    assert_ne!(sample(1, None, "s1"), sample(2, None, "s2"));
    let with_critic = sample(1, Some(dir.join("critic")), "c1");
    assert_eq!(with_critic, sample(1, Some(dir.join("critic")), "c1b"));
    // `muse eval`: the same images in batches of 5 and of 12; both scored against their
    // captions beside the real images of the same captions, recorded once in eval.json.
    let run = dir.join("mamba_xattn_xz");
    let eval = |batch: usize| {
        let a = EvalArgs {
            run: run.clone(),
            samples: 12,
            prompts: Prompts::Data,
            decoding: Decoding { steps: 4, ..Decoding::default() },
            batch,
            pick: Default::default(),
            classifier: None,
            fid_weights: None,
            clip: None,
        };
        muse_train::eval::evaluate(&a, s.as_ref()).unwrap()
    };
    // A classifier of caption words on the same images: its loss falls, and the Frechet
    // distance on its features separates generated images from real ones more than two
    // disjoint sets of real images.
    let classifier = TrainArgs {
        model: model("shapes_classifier"),
        sets: sets(&[("resolution", "8"), ("channels", "8"), ("groups", "4"), ("features", "16")]),
        steps: 400,
        batch: 16,
        out: dir.join("classifier"),
        lr: 3e-3,
        warmup: 5,
        checkpoint_every: 200,
        ..TrainArgs::default()
    };
    let c = train(&classifier, Start::New, s.as_ref()).unwrap();
    // Knowing only how often each word occurs scores the mean binary entropy of the words:
    // the classifier must see more than that in the pixels.
    let captions: Vec<String> =
        (0..4000).map(|i| muse_train::data::shapes::Shapes::new(8, 0).draw_caption(i)).collect();
    let words = muse_train::objective::classifier::label_words(&captions);
    let base = words
        .iter()
        .map(|w| {
            let p = captions.iter().filter(|c| c.split(' ').any(|x| x == w)).count() as f64 / captions.len() as f64;
            -(p * p.ln() + (1.0 - p) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / words.len() as f64;
    let l = common::losses(&classifier.out);
    let last = l[l.len() - 20..].iter().sum::<f64>() / 20.0;
    eprintln!("classifier: loss {last:.3} at the end; word frequencies alone {base:.3}");
    assert!(last < 0.8 * base, "classifier: {} -> {last:.3}; word frequencies alone give {base:.3}", c.first_loss);
    let mut net = muse_train::eval::features::FeatureNet::open(&classifier.out, s.as_ref()).unwrap();
    let shapes8 = muse_train::data::shapes::Shapes::new(8, 99);
    let fd_of = |net: &mut muse_train::eval::features::FeatureNet, from: u64| {
        let images: Vec<f32> = (from..from + 64).flat_map(|i| shapes8.sample(i).image).collect();
        let mut m = muse_train::eval::frechet::Moments::new(net.dim);
        m.add(&net.features(&images, 64).unwrap()).unwrap();
        m.gaussian().unwrap()
    };
    let (real_a, real_b) = (fd_of(&mut net, 0), fd_of(&mut net, 1000));
    let real_fd = muse_train::eval::frechet::frechet_distance(&real_a, &real_b).unwrap();
    let with_fd = EvalArgs {
        run: run.clone(),
        samples: 64,
        prompts: Prompts::Data,
        decoding: Decoding { steps: 4, ..Decoding::default() },
        batch: 32,
        pick: Default::default(),
        classifier: Some(classifier.out.clone()),
        fid_weights: None,
        clip: None,
    };
    let e = muse_train::eval::evaluate(&with_fd, s.as_ref()).unwrap();
    let fake_fd = e["classifier_fd"]["value"].as_f64().unwrap();
    assert_eq!(e["classifier_fd"]["images"], 64);
    assert!(fake_fd > real_fd, "generated {fake_fd} vs real-real {real_fd}");
    let (e5, e12) = (eval(5), eval(12));
    assert_eq!(e5["alignment"], e12["alignment"]);
    assert_eq!(e5["alignment"]["overall"]["judged"], 12);
    let real = e5["real_alignment"]["overall"]["fraction"].as_f64().unwrap();
    let generated = e5["alignment"]["overall"]["fraction"].as_f64().unwrap();
    assert!(real >= 0.9 && generated < real, "real {real}, generated {generated}");
    let recorded = muse_train::eval::recorded(&run).unwrap();
    assert_eq!(recorded.len(), 2, "a repeated evaluation replaces the first: {recorded:?}");
    let small = recorded.iter().find(|e| e["samples"] == 12).unwrap();
    assert_eq!(small["checkpoint_step"], 150);
    assert!(run.join(small["grid"].as_str().unwrap()).is_file());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let dir = scratch("resume");
    let s = settings();
    train(&vq(&dir), Start::New, s.as_ref()).unwrap();
    // With a weight average, which the checkpoints carry as ema/*.
    let whole = TrainArgs { ema: 0.9, ..masked("mamba_xattn_xz", &dir, 20) };
    train(&whole, Start::New, s.as_ref()).unwrap();
    let mut half = TrainArgs { out: dir.join("halves"), steps: 10, ..whole.clone() };
    train(&half, Start::New, s.as_ref()).unwrap();
    half.steps = 20;
    let again = train(&half, Start::New, s.as_ref());
    let e = again.unwrap_err();
    assert!(
        matches!(e, Error::RunDir(_)) && e.to_string().contains("--resume"),
        "a second start into the same run is refused: {e}"
    );
    let mut resumed = TrainArgs::from_run(&half.out).unwrap();
    resumed.steps = 20;
    train(&resumed, Start::Resume { allow_changed_source: false }, s.as_ref()).unwrap();
    let ck = |run: &Path| muse_runtime::checkpoint::load(&run.join("checkpoints/step-00000020.safetensors")).unwrap();
    let (a, b) = (ck(&whole.out), ck(&half.out));
    let only = |x: &muse_runtime::Tensors, y: &muse_runtime::Tensors| {
        x.keys().filter(|k| !y.contains_key(*k)).cloned().collect::<Vec<_>>()
    };
    assert_eq!(a.len(), b.len(), "only uninterrupted: {:?}, only resumed: {:?}", only(&a, &b), only(&b, &a));
    assert!(a.keys().any(|k| k.starts_with("ema/")), "the checkpoint holds the weight average");
    for (k, t) in &a {
        assert_eq!(t, &b[k], "{k} differs after resuming");
    }
    assert_eq!(common::losses(&whole.out), common::losses(&half.out), "the metrics of both runs agree step by step");
    // A chosen checkpoint, raw or averaged weights.
    let open = |step: Option<u64>, weights: Weights| {
        TrainedTokenModel::open_at(&whole.out, Pick { step, weights }, s.as_ref()).unwrap()
    };
    let ck10 = ck_at(&whole.out, 10);
    let (raw, avg) = (open(Some(10), Weights::Raw), open(Some(10), Weights::Ema));
    assert!(!raw.ema && avg.ema && raw.step == 10);
    for (name, t) in &raw.params {
        assert_eq!(t, &ck10[name]);
        assert_eq!(&avg.params[name], &ck10[&format!("ema/{name}")]);
    }
    assert_eq!(open(None, Weights::Ema).step, 20);
    // `muse export`: the chosen weights alone, loadable by name as parameters.
    let exported = dir.join("export.safetensors");
    muse_train::trained::export(&whole.out, Pick { step: Some(10), weights: Weights::Ema }, &exported).unwrap();
    let file = muse_runtime::checkpoint::load(&exported).unwrap();
    assert_eq!(file.len(), avg.params.len(), "parameters only, no optimizer state");
    for (name, t) in &avg.params {
        assert_eq!(&file[name], t);
    }
    let loaded = muse_runtime::checkpoint::load_params(&avg.model.graph, &exported).unwrap();
    assert_eq!(loaded.len(), avg.params.len());
    let missing = TrainedTokenModel::open_at(&whole.out, Pick { step: Some(7), ..Pick::default() }, s.as_ref());
    let e = missing.err().expect("no checkpoint of step 7").to_string();
    assert!(e.contains("step 7") && e.contains("10, 20"), "{e}");
    // A new run from that checkpoint's weights (--init) with the text encoder frozen: the
    // encoder comes out exactly as loaded, the rest trains on; resuming keeps both settings.
    let init = whole.out.join("checkpoints/step-00000020.safetensors");
    let frozen = TrainArgs {
        init: Some(init.clone()),
        freeze: vec!["text".into()],
        out: dir.join("frozen"),
        ..masked("mamba_xattn_xz", &dir, 4)
    };
    train(&frozen, Start::New, s.as_ref()).unwrap();
    let mut more = TrainArgs::from_run(&frozen.out).unwrap();
    assert_eq!((more.init.as_deref(), more.freeze.clone()), (Some(init.as_path()), vec!["text".to_string()]));
    more.steps = 8;
    train(&more, Start::Resume { allow_changed_source: false }, s.as_ref()).unwrap();
    let after = ck_at(&frozen.out, 8);
    let texts: Vec<&String> = a.keys().filter(|k| k.starts_with("text_encoder.")).collect();
    assert!(!texts.is_empty());
    for k in texts {
        assert_eq!(after[k], a[k], "{k} is frozen");
    }
    let moved = a.keys().filter(|k| k.starts_with("layers.") && after.get(*k).is_some_and(|t| t != &a[*k])).count();
    assert!(moved > 0, "the rest trains");
    let bad = TrainArgs { freeze: vec!["nothing_here".into()], out: dir.join("bad"), ..frozen.clone() };
    let e = train(&bad, Start::New, s.as_ref()).unwrap_err();
    assert!(matches!(e, Error::Train(_)) && e.to_string().contains("nothing_here"), "{e}");
    let vq_ck = ck_at(&dir.join("vq"), 30);
    let tmp = dir.join("unrelated.safetensors");
    muse_runtime::checkpoint::save(&tmp, &vq_ck).unwrap();
    let unrelated = TrainArgs { init: Some(tmp), out: dir.join("bad2"), ..frozen.clone() };
    let e = train(&unrelated, Start::New, s.as_ref()).unwrap_err();
    assert!(matches!(e, Error::Usage(_)) && e.to_string().contains("none of its"), "weights of another model: {e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn ck_at(run: &Path, step: u64) -> muse_runtime::Tensors {
    muse_runtime::checkpoint::load(&run.join(format!("checkpoints/step-{step:08}.safetensors"))).unwrap()
}

#[test]
fn a_damaged_checkpoint_is_never_loaded() {
    let dir = scratch("damaged");
    let s = settings();
    let args = vq(&dir);
    train(&TrainArgs { steps: 10, ..args.clone() }, Start::New, s.as_ref()).unwrap();
    let run = muse_train::run::RunDir::open(&args.out).unwrap();
    assert!(run.latest().unwrap().is_some());
    // Cut the checkpoint short, as a crash in the middle of writing it would (were it not
    // written to a temporary file first).
    let file = args.out.join("checkpoints/step-00000010.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = run.latest().unwrap_err();
    assert!(matches!(err, Error::RunDir(_)) && err.to_string().contains("damaged"), "{err}");
    let mut resumed = TrainArgs::from_run(&args.out).unwrap();
    resumed.steps = 20;
    assert!(
        train(&resumed, Start::Resume { allow_changed_source: false }, s.as_ref()).is_err(),
        "resuming from a damaged checkpoint fails"
    );
    std::fs::remove_dir_all(&dir).ok();
}

const RESUME: Start = Start::Resume { allow_changed_source: false };

/// A copy of a finished run, damaged by `harm`, resumed to `steps`: what it ends with and
/// the last step of its metrics log.
fn resumed_after(
    from: &Path,
    name: &str,
    steps: u64,
    harm: impl Fn(&Path),
) -> Result<(muse_runtime::Tensors, u64), Error> {
    let to = from.with_file_name(name);
    std::fs::create_dir_all(to.join("checkpoints")).unwrap();
    for rel in ["config.json", "latest.json", "metrics.jsonl"] {
        std::fs::copy(from.join(rel), to.join(rel)).unwrap();
    }
    for e in std::fs::read_dir(from.join("checkpoints")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("checkpoints").join(e.file_name())).unwrap();
    }
    harm(&to);
    let mut args = TrainArgs::from_run(&to).unwrap();
    args.steps = steps;
    train(&args, RESUME, settings().as_ref())?;
    let log = std::fs::read_to_string(to.join("metrics.jsonl")).unwrap();
    let steps_logged: Vec<u64> =
        log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert!(steps_logged.windows(2).all(|w| w[1] == w[0] + 1), "{name}: one line per step, in order: {steps_logged:?}");
    Ok((ck_at(&to, steps), *steps_logged.last().unwrap()))
}

/// What careless hands do to a run directory (issue: nothing a user does loses a run): each
/// damaged copy, resumed, ends with exactly the weights of an undamaged resume (training is
/// deterministic, so a fallback to an older checkpoint recomputes the same steps), or is
/// refused with a message naming what is wrong.
#[test]
fn damaged_run_directories_resume_from_what_verifies_or_refuse() {
    let dir = scratch("rundir");
    let s = settings();
    let args = TrainArgs { steps: 6, checkpoint_every: 2, keep: 3, ..vq(&dir) };
    train(&args, Start::New, s.as_ref()).unwrap();
    let run = args.out.clone();
    let (clean, last) = resumed_after(&run, "clean", 8, |_| {}).unwrap();
    assert_eq!(last, 8);
    // latest.json deleted: the newest checkpoint (step 6) takes its place; the new step-8
    // checkpoint is not pruned for sorting below an old one.
    let (w, _) = resumed_after(&run, "no-latest", 8, |d| std::fs::remove_file(d.join("latest.json")).unwrap()).unwrap();
    assert_eq!(w, clean, "no latest.json");
    let kept: Vec<String> = std::fs::read_dir(dir.join("no-latest/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(kept.contains(&"step-00000008.safetensors".to_string()) && kept.len() == 3, "{kept:?}");
    // A field of the wrong type is damage, not step 0.
    let (w, _) = resumed_after(&run, "wrong-type", 8, |d| {
        let p = d.join("latest.json");
        let t = std::fs::read_to_string(&p).unwrap().replace("\"step\":6", "\"step\":\"6\"");
        assert!(t.contains("\"6\""));
        std::fs::write(&p, t).unwrap();
    })
    .unwrap();
    assert_eq!(w, clean, "latest.json with a string step");
    // The newest checkpoint damaged in place at the same size: its checksum fails and the one
    // of step 4 is resumed from; steps 5 and 6 are recomputed exactly.
    let flip = |d: &Path, step: u64| {
        let p = d.join(format!("checkpoints/step-{step:08}.safetensors"));
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() - 9;
        b[at] ^= 0x20;
        std::fs::write(&p, b).unwrap();
    };
    let (w, _) = resumed_after(&run, "flipped", 8, |d| flip(d, 6)).unwrap();
    assert_eq!(w, clean, "one bit of the latest checkpoint");
    // Every checkpoint damaged: refused, naming each, never a silent restart from step 0.
    let e = resumed_after(&run, "all-flipped", 8, |d| [2, 4, 6].iter().for_each(|&k| flip(d, k))).unwrap_err();
    assert!(matches!(e, Error::RunDir(_)) && e.to_string().matches("damaged").count() >= 3, "{e}");
    // Temporary files of interrupted writes go.
    let (_, _) = resumed_after(&run, "stale", 8, |d| {
        std::fs::write(d.join("checkpoints/.step-00000008.safetensors.tmp-1-0"), vec![0u8; 1000]).unwrap();
        std::fs::write(d.join(".latest.json.tmp-1-0"), "{").unwrap();
    })
    .unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.join("stale/checkpoints"))
        .unwrap()
        .chain(std::fs::read_dir(dir.join("stale")).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The model file changed since: refused, unless allowed; the recorded source is kept and
    // the new one recorded beside it.
    let edited = dir.join("edited.muse");
    std::fs::copy(model("vq_tokenizer"), &edited).unwrap();
    let e_args = TrainArgs { model: edited.clone(), out: dir.join("edited-run"), ..args.clone() };
    train(&e_args, Start::New, s.as_ref()).unwrap();
    let original = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, format!("{original}\n# an edit\n")).unwrap();
    let mut more = TrainArgs::from_run(&e_args.out).unwrap();
    more.steps = 8;
    let e = train(&more, RESUME, s.as_ref()).unwrap_err();
    assert!(e.to_string().contains("changed since") && e.to_string().contains("--allow-changed-source"), "{e}");
    train(&more, Start::Resume { allow_changed_source: true }, s.as_ref()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e_args.out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["source"].as_str(), Some(original.as_str()), "the recorded source is kept");
    let change = &config["source_changes"][0];
    assert!(change["source"].as_str().unwrap().ends_with("# an edit\n") && change["from_step"] == 6, "{change}");

    // A folder of the user's own with a config.json is not a run: refused, left as it was.
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("config.json"), "{\"mine\": 1}").unwrap();
    let e = train(&TrainArgs { out: foreign.clone(), ..args.clone() }, Start::New, s.as_ref()).unwrap_err();
    assert!(e.to_string().contains("not a muse run"), "{e}");
    assert_eq!(std::fs::read_to_string(foreign.join("config.json")).unwrap(), "{\"mine\": 1}");
    // A new run into a run that has checkpoints is refused.
    let e = train(&args, Start::New, s.as_ref()).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");

    // While one process trains in a run, another is refused with the holder's PID.
    let held = muse_train::run::RunDir::for_training(&run, 3, true).unwrap();
    let mut again = TrainArgs::from_run(&run).unwrap();
    again.steps = 10;
    let e = train(&again, RESUME, s.as_ref()).unwrap_err();
    assert!(e.to_string().contains(&format!("PID {}", std::process::id())), "{e}");
    drop(held);
    train(&again, RESUME, s.as_ref()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_images_are_skipped_named_and_counted() {
    let dir = scratch("corrupt");
    let data = dir.join("images");
    std::fs::create_dir_all(&data).unwrap();
    let mut meta = String::new();
    // Real PNG and JPEG files (written by the image crate) of different sizes and aspect
    // ratios, one file of garbage with a .png name, and one truncated PNG.
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(10 + 3 * i, 8 + i, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 30) as u8, (i * 40) as u8])
        });
        let name = if i % 2 == 0 { format!("ok{i}.png") } else { format!("ok{i}.jpg") };
        img.save(data.join(&name)).unwrap();
        meta.push_str(&format!("{{\"file_name\": \"{name}\", \"text\": \"picture {i}\"}}\n"));
    }
    std::fs::write(data.join("garbage.png"), b"this is not a png at all").unwrap();
    let good = std::fs::read(data.join("ok0.png")).unwrap();
    std::fs::write(data.join("cut.png"), &good[..good.len() / 2]).unwrap();
    // A FIFO named like an image (reading it blocked training forever), and images whose
    // headers alone must refuse them: 20,000,000 x 1 (a resize to the model's resolution
    // would ask for 15 GB) and 20,000 x 20,000.
    let fifo = Command::new("mkfifo").arg(data.join("fifo.png")).status().unwrap();
    assert!(fifo.success());
    std::fs::write(data.join("long.png"), png_header_only(20_000_000, 1)).unwrap();
    std::fs::write(data.join("huge.png"), png_header_only(20_000, 20_000)).unwrap();
    meta.push_str(
        "{\"file_name\": \"garbage.png\", \"text\": \"broken\"}\n{\"file_name\": \"cut.png\", \"text\": \"cut\"}\n",
    );
    for name in ["fifo.png", "long.png", "huge.png"] {
        meta.push_str(&format!("{{\"file_name\": \"{name}\", \"text\": \"bad\"}}\n"));
    }
    std::fs::write(data.join("metadata.jsonl"), meta).unwrap();

    let folder = muse_train::data::folder::ImageFolder::open(&data, 8, false).unwrap();
    use muse_train::data::Dataset;
    assert_eq!(folder.size(), Some(11));
    let errors: Vec<String> = (0..11).filter_map(|i| folder.get(i).err().map(|e| e.to_string())).collect();
    assert_eq!(errors.len(), 5, "{errors:?}");
    let said = |file: &str, why: &str| errors.iter().any(|e| e.contains(file) && e.contains(why));
    assert!(said("garbage.png", "decode") && said("cut.png", "decode"), "{errors:?}");
    assert!(said("fifo.png", "not a regular file"), "{errors:?}");
    assert!(said("long.png", "20000000 x 1") && said("huge.png", "more than the 100000000"), "{errors:?}");
    let ok = folder.get(0).unwrap();
    assert_eq!(ok.image.len(), 8 * 8 * 3);
    assert!(ok.image.iter().all(|v| (-1.0..=1.0).contains(v)));

    let args = TrainArgs { data: data.display().to_string(), steps: 6, batch: 4, ..vq(&dir) };
    train(&args, Start::New, settings().as_ref()).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(args.out.join("metrics.jsonl")).unwrap().lines().last().unwrap())
            .unwrap();
    // 6 steps of 4 images pass over the 6 good entries four times; each pass skips the bad ones.
    assert!(last["skipped_items"].as_u64().unwrap() >= 10, "{last}");
    // Each skipped image listed once, with why, where the closing summary says.
    let listed = std::fs::read_to_string(args.out.join(muse_train::run::SKIPPED)).unwrap();
    assert_eq!(listed.lines().count(), 5, "{listed}");

    // metadata.jsonl may not point outside its folder, and a line that is not UTF-8 is named.
    for (line, why) in [
        ("{\"file_name\": \"../outside.png\", \"text\": \"x\"}", "leaves the data folder"),
        ("{\"file_name\": \"/etc/passwd\", \"text\": \"x\"}", "leaves the data folder"),
    ] {
        std::fs::write(
            data.join("metadata.jsonl"),
            format!("{{\"file_name\": \"ok0.png\", \"text\": \"a\"}}\n{line}\n"),
        )
        .unwrap();
        let e = muse_train::data::folder::ImageFolder::open(&data, 8, false).err().unwrap().to_string();
        assert!(e.contains("metadata.jsonl:2") && e.contains(why), "{e}");
    }
    let mut bytes =
        b"{\"file_name\": \"ok0.png\", \"text\": \"a\"}\n{\"file_name\": \"ok2.png\", \"text\": \"caf".to_vec();
    bytes.extend([0xe9, b'"', b'}', b'\n']);
    std::fs::write(data.join("metadata.jsonl"), bytes).unwrap();
    let e = muse_train::data::folder::ImageFolder::open(&data, 8, false).err().unwrap().to_string();
    assert!(e.contains("metadata.jsonl:2") && e.contains("not UTF-8"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A PNG of `w` x `h` pixels whose header is whole and whose pixel data is missing: what a
/// decoder reads first, and all a size check may read.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        out.extend(&body);
        out.extend(crc(&body).to_be_bytes());
        out
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A progressive-resolution tokenizer run with a PatchGAN discriminator (8x8, then 16x16
/// with a smaller batch and two micro-batches per step) carries its parameters, moments,
/// weight average and the discriminator's weights and moments across the stage boundary;
/// interrupted inside the second stage and resumed, it equals an uninterrupted run tensor for
/// tensor and step for step. The discriminator starts inside the first stage (so it crosses
/// the stage boundary), or exactly where the interrupted run stopped (so the resumed run
/// starts it from a checkpoint written without it).
#[test]
fn progressive_resolution_resumes_across_stages() {
    progressive_run("4");
    progressive_run("8");
}

fn progressive_run(disc_start: &str) {
    use muse_train::config::Stage;
    let dir = scratch(&format!("stages{disc_start}"));
    let s = settings();
    let stages = vec![
        Stage { resolution: 8, until: 6, batch: 8, accumulate: 1 },
        Stage { resolution: 16, until: 12, batch: 4, accumulate: 2 },
    ];
    // Warmup covers the interrupted part: the learning rate of a step depends on the run's
    // length after the warmup.
    let mut adversarial = vq(&dir).sets;
    adversarial.extend(sets(&[("adversarial", "0.1"), ("disc_channels", "8"), ("disc_layers", "1")]));
    adversarial.push(("disc_start".into(), disc_start.into()));
    let whole = TrainArgs {
        sets: adversarial,
        stages: stages.clone(),
        steps: 12,
        ema: 0.9,
        warmup: 8,
        checkpoint_every: 4,
        out: dir.join("whole"),
        ..vq(&dir)
    };
    let w = train(&whole, Start::New, s.as_ref()).unwrap();
    assert!(w.first_loss.is_finite() && w.last_loss.is_finite());
    let recorded = TrainArgs::from_run(&whole.out).unwrap();
    assert_eq!(recorded.stages, stages, "config.json records the stages");
    assert!(recorded.sets.contains(&("resolution".into(), "16".into())), "the model is the last stage's");
    let half = TrainArgs {
        out: dir.join("half"),
        steps: 8,
        stages: vec![stages[0], Stage { until: 8, ..stages[1] }],
        ..whole.clone()
    };
    train(&half, Start::New, s.as_ref()).unwrap();
    let mut resumed = TrainArgs::from_run(&half.out).unwrap();
    resumed.steps = 12;
    resumed.stages.last_mut().unwrap().until = 12;
    train(&resumed, Start::Resume { allow_changed_source: false }, s.as_ref()).unwrap();
    let ck = |run: &Path| muse_runtime::checkpoint::load(&run.join("checkpoints/step-00000012.safetensors")).unwrap();
    let (a, b) = (ck(&whole.out), ck(&half.out));
    assert_eq!(a.len(), b.len());
    for (k, t) in &a {
        assert_eq!(t, &b[k], "{k} differs after resuming");
    }
    assert_eq!(common::losses(&whole.out), common::losses(&half.out));
    assert_eq!(common::losses(&whole.out).len(), 12);
    // The discriminator trained (its own moments are saved) and logged its loss each step.
    assert!(a.contains_key("disc/adamw.step") && a.contains_key("disc.conv_in.weight"));
    let start: u64 = disc_start.parse().unwrap();
    assert_eq!(a["disc/adamw.step"].to_f64()[0], (12 - start) as f64);
    let log = std::fs::read_to_string(whole.out.join("metrics.jsonl")).unwrap();
    let with: Vec<bool> = log.lines().map(|l| l.contains("\"disc_loss\"")).collect();
    assert_eq!(with, (1..=12).map(|s| s > start).collect::<Vec<_>>(), "the discriminator steps from disc_start on");
    // A stage that does not end after the one before is refused.
    let bad = TrainArgs {
        out: dir.join("bad"),
        stages: vec![stages[0], Stage { until: 6, ..stages[1] }],
        steps: 6,
        ..whole.clone()
    };
    let e = train(&bad, Start::New, s.as_ref()).unwrap_err();
    assert!(matches!(e, Error::Usage(_)) && e.to_string().contains("later step"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A generator run: its name, model file and settings beyond the tiny ones.
type Variant = (String, &'static str, Vec<(&'static str, &'static str)>);

/// Every generator of `models/` (both combinations of mamba_parallel) as a run name and its
/// extra settings.
fn generators() -> Vec<Variant> {
    let mut v = Vec::new();
    for &name in common::MODELS {
        if name == "token_critic" || common::IMAGE_MODELS.contains(&name) {
            continue;
        }
        if name == "mamba_parallel" {
            for combine in ["sum", "product"] {
                v.push((format!("{name}_{combine}"), name, vec![("combine", combine)]));
            }
        } else {
            v.push((name.to_string(), name, vec![]));
        }
    }
    v
}

#[test]
fn every_generator_variant_trains_and_samples() {
    let dir = scratch("variants");
    let s = settings();
    train(&vq(&dir), Start::New, s.as_ref()).unwrap();
    let all = generators();
    assert_eq!(all.len(), 15, "thirteen Mamba variants (mamba_parallel twice) and two Muse transformers");
    let mut runs = Vec::new();
    for (run, file, extra) in all {
        let mut args = masked(file, &dir, 20);
        args.out = dir.join(&run);
        args.sets.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let r = train(&args, Start::New, s.as_ref()).unwrap_or_else(|e| panic!("{run}: {e}"));
        let l = common::losses(&args.out);
        assert_eq!(l.len(), 20, "{run}");
        assert!(l.iter().all(|x| x.is_finite()), "{run}: {l:?}");
        // Uniform guessing over 32 codes is ln 32 = 3.47: twenty steps learn the background.
        let last = l[15..].iter().sum::<f64>() / 5.0;
        assert!(last < l[0] - 0.3, "{run}: masked-token loss {} -> {last:.3} ({r:?})", l[0]);
        let a = SampleArgs {
            run: args.out.clone(),
            prompts: vec!["a large red circle in the center".into(), "a white square above a blue circle".into()],
            decoding: Decoding { steps: 3, ..Decoding::default() },
            out: args.out.join("samples"),
            critic: None,
            batch: 2,
            pick: Default::default(),
        };
        let files = muse_train::sample::sample(&a, s.as_ref()).unwrap_or_else(|e| panic!("{run}: sampling: {e}"));
        assert_eq!(files.len(), 3, "{run}");
        let listing = std::fs::read_to_string(args.out.join("samples/prompts.txt")).unwrap();
        assert!(listing.contains("relation"), "{run}: both prompts are judged: {listing}");
        let e = EvalArgs {
            run: args.out.clone(),
            samples: 6,
            prompts: Prompts::Data,
            decoding: Decoding { steps: 2, ..Decoding::default() },
            batch: 6,
            pick: Default::default(),
            classifier: None,
            fid_weights: None,
            clip: None,
        };
        muse_train::eval::evaluate(&e, s.as_ref()).unwrap_or_else(|e| panic!("{run}: eval: {e}"));
        runs.push(args.out.clone());
    }
    // `muse table` over them: one row each with the compiled model's parameter count, plots
    // naming every run, a row of samples per run.
    let summaries: Vec<RunSummary> = runs.iter().map(|r| RunSummary::read(r).unwrap()).collect();
    let md = markdown(&summaries);
    assert_eq!(md.lines().filter(|l| l.starts_with("| mamba") || l.starts_with("| muse")).count(), 15, "{md}");
    for (r, (run, file, extra)) in summaries.iter().zip(generators()) {
        let mut sets: Vec<(String, String)> = masked(file, &dir, 20).sets;
        sets.extend(
            [("codebook", "32"), ("grid", "4")].iter().chain(&extra).map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let sets: Vec<(&str, &str)> = sets.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(r.params, common::compile_model(file, &sets).graph.param_count(), "{run}");
        assert_eq!(r.name, run);
        assert!(r.method.starts_with(file), "{}", r.method);
        assert!(r.step == 20 && r.batch == 16 && r.losses.len() == 20);
        let row = md.lines().find(|l| l.starts_with(&format!("| {run} |"))).unwrap();
        assert!(row.contains(&format!("| {} |", r.params)) && row.contains("6 data prompts"), "{row}");
    }
    assert!(md.contains("mamba_parallel (") && md.contains("combine=product"), "the variant is in the method");
    let files = plots(&summaries, &dir.join("table")).unwrap();
    let loss = std::fs::read_to_string(&files[0]).unwrap();
    assert!(summaries.iter().all(|r| loss.contains(&r.name)), "every run in the legend");
    let sheet = image::open(&files[3]).unwrap();
    assert!(sheet.height() >= 15 * 64, "a row per run: {}", sheet.height());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore = "17 minutes in a debug build (Inception and CLIP at full size): cargo test --release --test train_e2e -- --ignored"]
fn eval_reports_fid_and_clip_score_with_imported_networks() {
    // The networks with PyTorch's random weights (the real ones are downloads): what is
    // checked here is the path through `muse eval`, the networks themselves in
    // tests/torch_reference.rs.
    let (Some(inception), Some(clip), Some(io)) =
        (common::torch::reference("inception"), common::torch::reference("clip"), common::torch::reference("clip_io"))
    else {
        return;
    };
    let dir = scratch("imported");
    let s = settings();
    train(&vq(&dir), Start::New, s.as_ref()).unwrap();
    train(&masked("mamba_xattn_xz", &dir, 10), Start::New, s.as_ref()).unwrap();
    let a = EvalArgs {
        run: dir.join("mamba_xattn_xz"),
        samples: 6,
        prompts: Prompts::Data,
        decoding: Decoding { steps: 2, ..Decoding::default() },
        batch: 3,
        pick: Default::default(),
        classifier: None,
        fid_weights: Some(inception.join("weights.safetensors")),
        clip: Some((clip.join("weights.safetensors"), io.join("tok/tokenizer.json"))),
    };
    let e = muse_train::eval::evaluate(&a, s.as_ref()).unwrap();
    let fid = &e["fid"];
    assert_eq!(fid["images"], 6);
    assert!(fid["value"].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0), "{fid}");
    assert!(fid["preprocessing"].as_str().unwrap().contains("pytorch-fid"));
    let c = &e["clip_score"];
    let (score, scaled) = (c["value"].as_f64().unwrap(), c["torchmetrics"].as_f64().unwrap());
    assert!((-1.0..=1.0).contains(&score) && (0.0..=100.0).contains(&scaled), "{c}");
    assert!(scaled >= 100.0 * score - 1e-9, "max(100 cos, 0) is at least 100 cos on average");
    assert!(c["real"].as_f64().is_some(), "real images of the same captions are scored too");
    assert_eq!(e["not_computed"]["fid"], serde_json::Value::Null);
    // `muse fid`: a folder of the built-in set's images as PNGs reads as the set itself
    // (FID ~ 0), and other images of the set are apart.
    use muse_train::eval::fid::{statistics, ImageSet};
    let mut net =
        muse_train::eval::features::FeatureNet::inception(&inception.join("weights.safetensors"), s.as_ref()).unwrap();
    let stream = muse_train::data::shapes::Shapes::new(16, muse_train::eval::eval_seed(0));
    let (same, other) = (dir.join("same"), dir.join("other"));
    for (folder, from) in [(&same, 0u64), (&other, 100)] {
        std::fs::create_dir_all(folder).unwrap();
        for i in 0..8 {
            let img = muse_train::picture::to_rgb8(&stream.sample(from + i).image, 16);
            muse_train::picture::save_png(&img, &folder.join(format!("{i}.png"))).unwrap();
        }
    }
    let g = |set: ImageSet, net: &mut muse_train::eval::features::FeatureNet| statistics(&set, Some(net), 8).unwrap();
    let builtin = g(ImageSet::Shapes(16), &mut net);
    let scale = builtin.cov.trace();
    let fid_same = frechet_distance(&builtin, &g(ImageSet::Folder(same), &mut net)).unwrap();
    let fid_other = frechet_distance(&builtin, &g(ImageSet::Folder(other), &mut net)).unwrap();
    assert!(fid_same.abs() < 1e-3 * scale && fid_other > 1e-2 * scale, "{fid_same} {fid_other} (tr {scale})");
    for d in [inception, clip, io, dir] {
        std::fs::remove_dir_all(d).ok();
    }
}
