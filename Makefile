# smarttrim: one entry point for build, test, bench and dependencies.
#
#   make demo       the Fashion-MNIST SmartTrim demo: data, training, evaluation,
#                   figures and out/demo/report.md (about 11 minutes on 2 cores)
#   make            library, tests and build/smarttrim
#   make test       every test suite, ending with "N passed, N failed"
#   make test-asan  the same suites under AddressSanitizer + UBSan
#   make bench      side-by-side benchmarks (prints ratios, writes JSON)
#   make deps       installs missing Debian packages (idempotent)

CXX      ?= g++
BUILD    ?= build
# -march=native lets the compiler use every vector instruction of the CPU it
# runs on (AVX-512 on ours) in the element-wise loops, LayerNorm and softmax:
# 100 SmartTrim training steps of the demo model took 7.8-9.4 s instead of
# 9.0-10.5 s (2 threads, four runs each, taking turns). The GEMM picks its
# kernel at run time either way. Such a binary runs only on CPUs like the one that
# built it; `make NATIVE=` builds one for any x86-64.
NATIVE   ?= -march=native
OPT      ?= -O3 $(NATIVE)
DEBUG    ?= -g
CXXFLAGS ?= $(OPT) $(DEBUG)
CXXFLAGS += -std=c++20 -Wall -Wextra -fopenmp -I. -MMD -MP
# GCC notes that passing a vector wider than the build's registers by value
# (the GEMM's AVX2 and AVX-512 kernels in a build for less) has another ABI;
# such values only pass between the functions of one file, so the note does
# not apply.
CXXFLAGS += -Wno-psabi
LDFLAGS  += -fopenmp
# A GPU machine without Debian's -dev packages builds with the headers and
# libraries that tools/gpu_check.sh pack copied into .device/ (git-ignored).
CXXFLAGS += $(if $(wildcard .device/include),-isystem .device/include)
LDFLAGS  += $(if $(wildcard .device/lib),-L.device/lib)
LDLIBS   += -lz -lm

# --- CUDA: compiled whenever nvcc is found, so a GPU-less CI proves it builds.
# nvcc on PATH may be a wrapper script in another folder, so CUDA_HOME is
# where nvcc itself says it lives (_HERE_ in its dry run), not where it was found.
NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA_ARCH ?= sm_90
ifneq ($(NVCC),)
  CUDA_HOME := $(abspath $(shell $(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ _HERE_=//p' | head -n 1)/..)
  ifeq ($(wildcard $(CUDA_HOME)/lib64/libcudart.so),)
    $(error nvcc is $(NVCC) but no libcudart.so under $(CUDA_HOME)/lib64; give NVCC= to build the CPU engine only)
  endif
  CUDA_SRC  := $(wildcard cuda/*.cu)
  CXXFLAGS  += -DSMARTTRIM_CUDA -I$(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublas
  NVCCFLAGS ?= -O3 -std=c++20 -arch=$(CUDA_ARCH) -I. -DSMARTTRIM_CUDA -Xcompiler -Wall,-Wextra,-fopenmp
else
  CUDA_SRC  :=
  $(info CUDA off (nvcc not found, or NVCC= given): building the CPU engine only)
endif

LIB_SRC  := $(wildcard engine/*.cpp engine/ops/*.cpp layers/*.cpp pruning/*.cpp weights/*.cpp data/*.cpp viz/*.cpp)
LIB_OBJ  := $(LIB_SRC:%.cpp=$(BUILD)/obj/%.o) $(CUDA_SRC:%.cu=$(BUILD)/obj/%.o)
APP_OBJ  := $(patsubst %.cpp,$(BUILD)/obj/%.o,$(wildcard apps/*.cpp))
TEST_OBJ := $(patsubst %.cpp,$(BUILD)/obj/%.o,$(wildcard tests/*.cpp))
LIB      := $(BUILD)/libsmarttrim.a

.PHONY: all demo test test-asan bench deps check-deps clean
all: $(BUILD)/smarttrim $(BUILD)/unit_tests

$(BUILD)/obj/%.o: %.cpp
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/smarttrim: $(APP_OBJ) $(LIB)
	$(CXX) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/unit_tests: $(TEST_OBJ) $(LIB)
	$(CXX) $(LDFLAGS) $^ $(LDLIBS) -o $@

# --- benchmarks: OpenBLAS is a benchmark-only dependency.
OPENBLAS_INC := $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas))
$(BUILD)/bench_gemm: bench/bench_gemm.cpp $(LIB)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) -I$(OPENBLAS_INC) $< $(LIB) $(LDFLAGS) $(LDLIBS) -lopenblas -o $@

$(BUILD)/bench_meter: bench/bench_meter.cpp $(LIB)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

$(BUILD)/bench_smarttrim: bench/bench_smarttrim.cpp $(LIB)
	@mkdir -p $(@D)
	$(CXX) $(CXXFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

# Debian's OpenBLAS picks its AVX2 (Haswell) kernel on some AVX-512 CPUs;
# where the CPU has AVX-512 we also compare with OpenBLAS's AVX-512 kernel.
bench: check-deps $(BUILD)/bench_gemm $(BUILD)/bench_meter $(BUILD)/bench_smarttrim
	$(BUILD)/bench_smarttrim --json $(BUILD)/bench_smarttrim.json
	$(BUILD)/bench_meter --json $(BUILD)/bench_meter.json
	$(BUILD)/bench_gemm --json $(BUILD)/bench_gemm.json
	@if grep -qw avx512f /proc/cpuinfo; then \
	  echo "--- again, with OpenBLAS forced to its AVX-512 kernel (OPENBLAS_CORETYPE=SkylakeX)"; \
	  OPENBLAS_CORETYPE=SkylakeX $(BUILD)/bench_gemm --json $(BUILD)/bench_gemm_skylakex.json; \
	fi

# --- the demo: only the program is built, without CUDA (the demo runs on the
# CPU, and nvcc would add a minute), in a folder of its own so that objects
# built with and without CUDA never mix. Without debug information (DEBUG=)
# the build took 1 min 11 s on 2 cores instead of 1 min 53 s.
DEMO_BUILD := $(BUILD)/demo
demo: check-deps
	$(MAKE) -j$$(nproc) NVCC= DEBUG= BUILD=$(DEMO_BUILD) $(DEMO_BUILD)/smarttrim
	SMARTTRIM=$(DEMO_BUILD)/smarttrim tools/demo.sh

# --- tests: every suite, one summary line.
test: check-deps all
	@tests/run_all.sh $(BUILD)

test-asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	        LDFLAGS="-fopenmp -fsanitize=address,undefined" NVCC= test

# --- dependencies from Debian's archive.
DEB_PACKAGES := libstb-dev doctest-dev nlohmann-json3-dev zlib1g-dev python3-torch python3-numpy python3-pil \
                python3-matplotlib libopenblas-dev dataset-fashion-mnist
deps:
	@tools/deps.sh $(DEB_PACKAGES)

# Installs only when something the build or the tests need is missing.
check-deps:
	@test -f /usr/include/doctest/doctest.h -a -f /usr/include/nlohmann/json.hpp \
	      -a -f /usr/include/stb/stb_image.h -a -f /usr/include/zlib.h -a -n "$(OPENBLAS_INC)" \
	      -a -d /usr/share/datasets/fashion-mnist \
	   && /usr/bin/python3 -c "import torch, numpy, PIL, matplotlib" 2>/dev/null \
	   || tools/deps.sh $(DEB_PACKAGES)

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
