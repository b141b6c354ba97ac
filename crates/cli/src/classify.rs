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
feature model.\n\n\
It also calibrates rejection (\"I don't know\"), stored in classifier.json: a photo gets no \
label when the model's own ImageNet softmax puts too little mass on its fruit classes \
(threshold passing --fruit-mass-pass of the training fruit photos), when it looks more like \
the --negatives photos than like any fruit, or when its best fruit probability is below a \
threshold that answers --answer-fraction of the training fruit photos, scored out of fold on \
scene-grouped folds (each label's photos clustered, whole clusters held out).";

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
    /// Images with a folder of this name in their path (e.g. `other`: vegetables, cartons) are
    /// negatives: one extra class that is never a label and rejects what looks like it
    #[arg(long, value_name = "FOLDER")]
    negatives: Option<String>,
    /// Operating point: the fraction of known-fruit training photos to answer (out of fold);
    /// lower rejects more and is right more often among the answered
    #[arg(long, default_value_t = TrainConfig::default().answer_fraction, value_name = "X")]
    answer_fraction: f64,
    /// Fraction of training fruit photos the ImageNet fruit-mass gate lets through
    #[arg(long, default_value_t = TrainConfig::default().fruit_mass_pass, value_name = "X")]
    fruit_mass_pass: f64,
    /// The ONNX feature model that made the features (its ImageNet layer gives the fruit mass)
    /// [default: the shared MobileNetV2]
    #[arg(long, env = "VERGER_MODEL", value_name = "FILE")]
    model: Option<PathBuf>,
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
    /// Also score the images with a folder of this name in their path as photos that should
    /// get no label (e.g. `other` for a classifier trained without --negatives)
    #[arg(long, value_name = "FOLDER")]
    not_fruit: Option<String>,
    /// The ONNX feature model (its ImageNet layer gives the fruit mass) [default: the shared
    /// MobileNetV2]
    #[arg(long, env = "VERGER_MODEL", value_name = "FILE")]
    model: Option<PathBuf>,
}

/// The feature model's ImageNet head, from the model file that made the
/// features of `location` (checked by sha256, so the head is that model's).
fn imagenet_head(
    model: Option<&std::path::Path>,
    expected_sha256: &str,
) -> anyhow::Result<verger_model::ImagenetHead> {
    // Features of a model verger knows name their precision, so the default
    // lookup finds the right file (the int8 one for int8 features).
    let precision = verger_model::Precision::of_known_sha256(expected_sha256).unwrap_or_default();
    let path = verger_model::resolve_model_path(model, precision)?;
    let file = verger_model::ModelFile::open(&path, precision)?;
    anyhow::ensure!(
        file.sha256.eq_ignore_ascii_case(expected_sha256),
        "the feature model {} (sha256 {}…) did not make these features (made by {}…); \
         pass the right one with --model",
        path.display(),
        verger_classifier::sha_prefix(&file.sha256),
        verger_classifier::sha_prefix(expected_sha256)
    );
    Ok(verger_model::ImagenetHead::from_onnx(&path)?)
}

pub fn train(args: TrainArgs, runtime: tokio::runtime::Runtime) -> anyhow::Result<()> {
    let config = TrainConfig {
        split: args.train_split,
        regularisation: args.regularisation,
        max_iterations: args.max_iterations.max(1),
        knn_k: args.knn_k.max(1),
        negatives: args.negatives,
        answer_fraction: args.answer_fraction,
        fruit_mass_pass: args.fruit_mass_pass,
        average_views: verger_image::views::ViewSet::Serving.names(),
        ..TrainConfig::default()
    };
    let features = Location::parse(&args.features)?;
    let sha256 = runtime.block_on(verger_classifier::feature_model_sha256(&features))?;
    let head = imagenet_head(args.model.as_deref(), &sha256)?;
    let classifier = runtime.block_on(verger_classifier::train_on_output(
        &features, &config, &head,
    ))?;
    classifier.save(&args.out)?;
    let r = classifier.rejection();
    println!(
        "verger: rejection: fruit mass < {:.4} or {} -> not_a_fruit; best fruit probability \
         < {:.4} -> uncertain; out of fold: {:.4} answered, {:.4} right among answered \
         (closed-set top-1 {:.4})",
        r.fruit_mass.threshold,
        r.negatives
            .as_ref()
            .map_or("no negatives class".to_string(), |n| format!(
                "looks like the {} {} photos",
                n.training_photos, n.folder
            )),
        r.max_softmax.threshold,
        r.operating_point.oof_answered,
        r.operating_point.oof_accuracy_among_answered,
        r.operating_point.oof_top1
    );
    let t = classifier.training();
    println!(
        "verger: trained on {} {} images{}, {} labels ({}-d features of model {}…): \
         training accuracy {:.4}, loss {:.4}, in {:.1}s -> {}",
        t.images,
        t.split,
        match t.view_rows {
            0 => String::new(),
            rows => format!(
                " ({rows} view rows; each photo scored as the mean of {} views)",
                classifier.views().len()
            ),
        },
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
    let head = imagenet_head(args.model.as_deref(), classifier.feature_model_sha256())?;
    let evaluation = runtime.block_on(verger_classifier::evaluate_on_output(
        &classifier,
        &features,
        &args.test_split,
        knn_k,
        &head,
        args.not_fruit.as_deref(),
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
