// The subcommands of build/smarttrim; each parses its own options (argv[2..]).
// Return: the exit code. Bad arguments throw cli::UsageError (exit 2); any
// other failure throws st::Error (exit 1).
#pragma once

namespace st::app {

int data_command(int argc, char** argv);
int train_command(int argc, char** argv);
int eval_command(int argc, char** argv);
int bench_command(int argc, char** argv);
int infer_command(int argc, char** argv);
int viz_command(int argc, char** argv);

}  // namespace st::app
