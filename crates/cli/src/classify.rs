//! `verger train` and `verger evaluate`: flags in, `verger-classifier` calls out.

use std::path::PathBuf;

use clap::Args;
use verger_classifier::{Classifier, MODEL_FILE, TrainConfig};
use verger_store::Location;

pub const TRAIN_ABOUT: &str = "Fit the fruit classifier on the features of a finished `verger run`.\n\n\
It takes the images whose path has a folder named --train-split (…/Training/<label>/x.jpg; \
the label is the parent folder), standardises each of the 1280 feature dimensions (mean and \
std stored), and fits a multinomial logistic regression (softmax over one linear score per \
label, L2 penalty --regularisation, L-BFGS). It writes <out>/classifier.json: the sorted \
labels, the feature model's sha256 (from the run's run.json), the standardisation, the weights \
and how it was trained. `verger evaluate` and `verger serve` refuse features made by any other \
feature model.";

pub const TRAIN_EXAMPLES: &str = "Examples:\n  \
verger run --input ../shared/datasets/fruits360-sample --output out/sample\n  \
verger train --features out/sample --out model/\n  \
verger train --features s3://fruits/results/ --out model/ --train-split Training --regularisation 0.01\n  \
verger evaluate --classifier model/ --features out/sample";

pub const EVALUATE_ABOUT: &str = "Score a classifier made by `verger train` on held-out images.\n\n\
It takes the images whose path has a folder named --test-split (…/Test/<label>/x.jpg) from a \
finished `verger run` output made with the classifier's feature model (refused otherwise), and \
reports top-1 and top-5 accuracy, precision, recall and support per label, and the confusion \
matrix; alongside, a cosine k-nearest-neighbour baseline that uses the classifier's training \
split of the same output as reference. It prints a table and writes evaluation.json \
(format verger-evaluation, version 1), which `verger report --evaluation` shows.";

pub const EVALUATE_EXAMPLES: &str = "Examples:\n  \
verger evaluate --classifier model/ --features out/sample\n  \
verger evaluate --classifier model/ --features s3://fruits/results/ --test-split Test --out eval.json";

#[derive(Args)]
pub struct TrainArgs {
    /// The output of `verger run` (a folder or s3://bucket/prefix, with _SUCCESS) holding the
    /// training images' features
    #[arg(long, short, value_name = "OUTPUT")]
    features: String,
    /// Folder for classifier.json (created if missing; an existing classifier.json is replaced)
    #[arg(long, short, default_value = "model", value_name = "DIR")]
    out: PathBuf,
    /// Train on images with a folder of this name in their path (…/<SPLIT>/<label>/x.jpg)
    #[arg(long, default_value = "Training", value_name = "SPLIT")]
    train_split: String,
    /// L2 penalty λ on the weights (objective: mean cross-entropy + λ/2·‖W‖²); larger is smoother
    #[arg(long, default_value_t = TrainConfig::default().regularisation, value_name = "λ")]
    regularisation: f64,
    /// Upper bound on optimiser (L-BFGS) iterations
    #[arg(long, default_value_t = TrainConfig::default().max_iterations, value_name = "N")]
    max_iterations: u64,
    /// Neighbours of the kNN baseline that `verger evaluate` runs alongside (recorded in the model)
    #[arg(long, default_value_t = TrainConfig::default().knn_k, value_name = "K")]
    knn_k: usize,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// Folder holding classifier.json (written by `verger train`)
    #[arg(long, short, default_value = "model", value_name = "DIR")]
    classifier: PathBuf,
    /// The output of `verger run` (a folder or s3://bucket/prefix) holding the test images'
    /// features, made with the classifier's feature model
    #[arg(long, short, value_name = "OUTPUT")]
    features: String,
    /// Score the images with a folder of this name in their path (…/<SPLIT>/<label>/x.jpg)
    #[arg(long, default_value = "Test", value_name = "SPLIT")]
    test_split: String,
    /// Where evaluation.json goes [default: <classifier>/evaluation.json]
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Neighbours of the kNN baseline [default: as recorded by `verger train`]
    #[arg(long, value_name = "K")]
    knn_k: Option<usize>,
}

pub fn train(args: TrainArgs, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    let config = TrainConfig {
        split: args.train_split,
        regularisation: args.regularisation,
        max_iterations: args.max_iterations.max(1),
        knn_k: args.knn_k.max(1),
    };
    let features = Location::parse(&args.features)?;
    let classifier = runtime.block_on(verger_classifier::train_on_output(&features, &config))?;
    classifier.save(&args.out)?;
    let t = classifier.training();
    println!(
        "verger: trained on {} {} images, {} labels ({}-d features of model {}…): \
         training accuracy {:.4}, loss {:.4}, in {:.1}s -> {}",
        t.images,
        t.split,
        classifier.labels().len(),
        classifier.feature_dim(),
        verger_classifier::sha_prefix(classifier.feature_model_sha256()),
        t.train_accuracy,
        t.final_loss,
        t.seconds,
        args.out.join(MODEL_FILE).display()
    );
    Ok(())
}

pub fn evaluate(args: EvaluateArgs, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    let classifier = Classifier::load(&args.classifier)?;
    let features = Location::parse(&args.features)?;
    let knn_k = args.knn_k.unwrap_or(classifier.training().knn_k).max(1);
    let evaluation = runtime.block_on(verger_classifier::evaluate_on_output(
        &classifier,
        &features,
        &args.test_split,
        knn_k,
    ))?;
    let out = args
        .out
        .unwrap_or_else(|| args.classifier.join("evaluation.json"));
    evaluation.save(&out)?;
    print!("{}", evaluation.summary());
    let knn = evaluation
        .knn_baseline
        .as_ref()
        .map(|k| format!(", kNN baseline {:.4}", k.top1))
        .unwrap_or_default();
    println!(
        "verger: {} {} images: top-1 {:.4}, top-5 {:.4}{knn} -> {}",
        evaluation.images,
        evaluation.split,
        evaluation.top1,
        evaluation.top5,
        out.display()
    );
    Ok(())
}
