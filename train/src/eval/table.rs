//! `muse table`: the research log's results table from run directories (method, parameters,
//! steps, batch, FID, CLIP score, caption alignment, notes) as Markdown, and plots made with
//! `plotters`: loss curves overlaid, alignment against checkpoint step, and the runs'
//! samples for the same prompts side by side.

use crate::error::Error;
use crate::picture::save_png;
use crate::trained::run_model;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What the table says of one run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// The run directory.
    pub path: PathBuf,
    /// Its name in the table and the legends: the directory's name.
    pub name: String,
    /// Model file and the `--set` values it was trained with.
    pub method: String,
    /// Trained parameters.
    pub params: i64,
    /// Optimizer steps of the latest checkpoint.
    pub step: u64,
    /// Images per optimizer step (batch x accumulation).
    pub batch: usize,
    /// (step, loss) of every logged step.
    pub losses: Vec<(u64, f64)>,
    /// Its recorded evaluations (eval.json), in order of step.
    pub evals: Vec<Value>,
}

impl RunSummary {
    /// Reads a run directory (its config, latest checkpoint, metrics and evaluations).
    pub fn read(path: &Path) -> Result<RunSummary, Error> {
        let (model, targs) = run_model(path)?;
        let file = targs
            .model
            .file_stem()
            .map_or_else(|| targs.model.display().to_string(), |s| s.to_string_lossy().into_owned());
        let variant: Vec<String> = targs.sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let method = if variant.is_empty() { file } else { format!("{file} ({})", variant.join(", ")) };
        let step = latest_step(path)?;
        let metrics = path.join("metrics.jsonl");
        let losses = std::fs::read_to_string(&metrics)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                Some((v["step"].as_u64()?, v["loss"].as_f64().filter(|x| x.is_finite())?))
            })
            .collect();
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(RunSummary {
            path: path.to_path_buf(),
            name,
            method,
            params: model.graph.param_count(),
            step,
            batch: targs.batch * targs.accumulate.max(1),
            losses,
            evals: super::recorded(path)?,
        })
    }

    /// The evaluation the table reports: the latest checkpoint's (else the latest there is).
    pub fn evaluation(&self) -> Option<&Value> {
        let at = |s: u64| self.evals.iter().rev().find(|e| e["checkpoint_step"].as_u64() == Some(s));
        at(self.step).or(self.evals.last())
    }

    /// Mean loss of the last tenth of the logged steps (at most 200).
    pub fn final_loss(&self) -> Option<f64> {
        let n = (self.losses.len() / 10).clamp(1, 200);
        let tail = &self.losses[self.losses.len().saturating_sub(n)..];
        (!tail.is_empty()).then(|| tail.iter().map(|l| l.1).sum::<f64>() / tail.len() as f64)
    }
}

/// The prompts of the columns of `samples.png`: those of the first evaluated run.
pub fn sample_prompts(runs: &[RunSummary]) -> Vec<String> {
    runs.iter()
        .find_map(|r| {
            let grid = r.evaluation()?["grid"].as_str()?;
            let listing = r.path.join(grid).with_file_name("prompts.txt");
            std::fs::read_to_string(listing).ok()
        })
        .map(|t| t.lines().filter_map(|l| l.split('\t').nth(1).map(String::from)).collect())
        .unwrap_or_default()
}

/// The step `latest.json` names (0 before the first checkpoint).
fn latest_step(path: &Path) -> Result<u64, Error> {
    let p = path.join("latest.json");
    let Ok(text) = std::fs::read_to_string(&p) else { return Ok(0) };
    let v: Value = serde_json::from_str(&text).map_err(Error::format(&p))?;
    Ok(v["step"].as_u64().unwrap_or(0))
}

/// `0.234` as `23%`, a missing value as an em dash.
fn percent(v: Option<f64>) -> String {
    v.map_or("—".into(), |f| format!("{:.0}%", 100.0 * f))
}

/// The results table in Markdown: one row per run, and what each column means below it.
pub fn markdown(runs: &[RunSummary]) -> String {
    let mut t = String::from(
        "| run | method | parameters | steps | batch | final loss | FID | CLIP | classifier FD | alignment | colour | shape | size | place | relation | count | notes |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for r in runs {
        let e = r.evaluation();
        let a = e.map(|e| &e["alignment"]);
        let attr = |k: &str| percent(a.and_then(|a| a["attributes"][k]["fraction"].as_f64()));
        let metric = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.3}"));
        let mut notes = Vec::new();
        if let Some(e) = e {
            notes.push(format!(
                "{} {} prompts, {} weights at step {}, cfg {}",
                e["samples"],
                e["prompts"].as_str().unwrap_or("?"),
                e["weights"].as_str().unwrap_or("?"),
                e["checkpoint_step"],
                e["decoding"]["cfg"]
            ));
            if let Some(real) = e["real_alignment"]["overall"]["fraction"].as_f64() {
                notes.push(format!("real images {}", percent(Some(real))));
            }
        } else {
            notes.push("not evaluated (muse eval)".into());
        }
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.method,
            r.params,
            r.step,
            r.batch,
            r.final_loss().map_or("—".into(), |l| format!("{l:.3}")),
            metric(e.and_then(|e| e["fid"]["value"].as_f64())),
            metric(e.and_then(|e| e["clip_score"]["value"].as_f64())),
            metric(e.and_then(|e| e["classifier_fd"]["value"].as_f64())),
            percent(a.and_then(|a| a["overall"]["fraction"].as_f64())),
            attr("colour"),
            attr("shape"),
            attr("size"),
            attr("place"),
            attr("relation"),
            attr("count"),
            notes.join("; ")
        ));
    }
    t.push_str(
        "\nalignment: the share of generated images right in every attribute their caption asks for \
         (GenEval-style, muse's analyser of the built-in data set); colour ... count: the share right \
         in that attribute among the captions that ask for it. final loss: the mean training loss of \
         the last tenth of the logged steps. classifier FD: the Frechet distance between the features \
         of the generated and the real images under muse's classifier of the data set's caption words \
         (`muse eval --classifier`; lower is closer; not comparable to an Inception FID). FID: \
         Inception-v3 pool3 features with `muse eval --fid-weights` (pytorch-fid's preprocessing), \
         else —; CLIP: the mean cosine of CLIP ViT-B/32's image and caption embeddings, unscaled, with \
         `--clip-weights` and `--clip-tokenizer`, else —.\n",
    );
    t
}

/// A plot's failure as muse's error.
fn plot_error(file: &Path) -> impl Fn(Box<dyn std::error::Error + '_>) -> Error + '_ {
    move |e| Error::Usage(format!("drawing {}: {e}", file.display()))
}

/// Line colours, one per run (cycled).
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

/// Series of (x, y) points drawn as lines over each other, one per run, with a legend.
fn line_plot(file: &Path, title: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<(), Error> {
    let err = plot_error(file);
    let points = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(Box::new(e)))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(Box::new(e)))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| err(Box::new(e)))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(|e| err(Box::new(e)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        if pts.len() < 30 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(|e| err(Box::new(e)))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(Box::new(e)))?;
    root.present().map_err(|e| err(Box::new(e)))?;
    Ok(())
}

/// A moving average of `window` points, one point per window step (curves of thousands of
/// noisy steps stay readable and the SVG small).
fn smooth(losses: &[(u64, f64)], points: usize) -> Vec<(f64, f64)> {
    let window = (losses.len() / points.max(1)).max(1);
    losses
        .chunks(window)
        .map(|c| {
            (
                c.iter().map(|l| l.0 as f64).sum::<f64>() / c.len() as f64,
                c.iter().map(|l| l.1).sum::<f64>() / c.len() as f64,
            )
        })
        .collect()
}

/// Writes `loss.svg`, `alignment.svg`, `classifier_fd.svg` and `samples.png` (row i: run i's first evaluated
/// images, the same prompts in every row for runs evaluated alike) into `out`; returns the
/// files.
pub fn plots(runs: &[RunSummary], out: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let loss = out.join("loss.svg");
    let series: Vec<(String, Vec<(f64, f64)>)> =
        runs.iter().map(|r| (r.name.clone(), smooth(&r.losses, 200))).collect();
    line_plot(&loss, "training loss (moving average)", "loss", &series)?;
    let mut files = vec![loss];
    type Metric = fn(&Value) -> Option<f64>;
    let metrics: [(&str, &str, &str, Metric); 2] = [
        ("alignment.svg", "caption alignment against checkpoint step", "right in every attribute", |e| {
            e["alignment"]["overall"]["fraction"].as_f64()
        }),
        ("classifier_fd.svg", "classifier Frechet distance against checkpoint step", "Frechet distance", |e| {
            e["classifier_fd"]["value"].as_f64()
        }),
    ];
    for (name, title, y, value) in metrics {
        let file = out.join(name);
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|r| {
                // The evaluations made like the reported one, one point per checkpoint.
                let like = r.evaluation();
                let same = |e: &Value| {
                    like.is_some_and(|l| ["weights", "samples", "prompts", "decoding"].iter().all(|k| e[k] == l[k]))
                };
                let pts = r
                    .evals
                    .iter()
                    .filter(|e| same(e))
                    .filter_map(|e| Some((e["checkpoint_step"].as_f64()?, value(e)?)))
                    .collect();
                (r.name.clone(), pts)
            })
            .collect();
        line_plot(&file, title, y, &series)?;
        files.push(file);
    }
    let mut rows = Vec::new();
    for r in runs {
        let grid = r.evaluation().and_then(|e| e["grid"].as_str()).map(|g| r.path.join(g));
        let img = match grid.map(|g| crate::data::folder::open_image(&g)) {
            Some(Ok(img)) => img.to_rgb8(),
            // An empty row keeps the rows in table order.
            _ => image::RgbImage::from_pixel(8, 8, image::Rgb([96, 96, 96])),
        };
        rows.push(img);
    }
    let samples = out.join("samples.png");
    let (w, h) = rows.iter().fold((0, 0), |(w, h), i| (w.max(i.width()), h + i.height() + 4));
    let mut sheet = image::RgbImage::from_pixel(w.max(1), h.max(1), image::Rgb([255, 255, 255]));
    let mut y = 0;
    for img in &rows {
        image::imageops::overlay(&mut sheet, img, 0, y);
        y += img.height() as i64 + 4;
    }
    save_png(&sheet, &samples)?;
    files.push(samples);
    Ok(files)
}
