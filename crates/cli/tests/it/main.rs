//! Integration tests of the `verger` binary (see tests/python/ for the
//! independent Python references). One test binary so that the expensive
//! whole-sample run (`sample::SAMPLE_RUN`) is shared by several tests.

mod support;

mod bad_input;
mod bench;
mod classifier;
mod cli;
mod cluster;
mod faults;
mod incremental;
mod interop;
mod output;
mod pca;
mod precision;
mod quality;
mod reference;
mod rejection;
mod report;
mod resume;
mod s3;
mod sample;
mod scaled_decode;
mod serve;
mod views;
