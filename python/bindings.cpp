// pybind11 module bllama._engine: the C++ engine for Python. Long calls (load, generate, logits)
// run with the GIL released; the per-token callback re-acquires it. One call runs on an engine at a time: the turn is
// taken with the GIL released (a thread that waited for it while holding the GIL would block the running call's
// token callback, which needs the GIL: a deadlock), and a callback that calls back into its own engine gets a
// RuntimeError ("busy") instead of waiting for itself. C++ exceptions become
// ValueError (bad file / bad arguments), IndexError (token ids, context length), FileNotFoundError,
// OSError and RuntimeError, with the engine's message.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__GLIBCXX__)  // libstdc++: pthread_exit unwinds the thread with abi::__forced_unwind (take_gil)
#include <cxxabi.h>
#endif

#include "engine/doorbell.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/mapped_file.h"
#include "engine/weights.h"
#include "membw.h"

namespace py = pybind11;
using namespace bllama;

namespace {

std::vector<int32_t> to_ids(const std::vector<int64_t>& ids, int64_t vocab, const char* what) {
    std::vector<int32_t> out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= vocab)
            throw std::out_of_range(std::string(what) + ": token id " + std::to_string(ids[i]) + " at index " +
                                    std::to_string(i) + " is out of range [0, " + std::to_string(vocab) + ")");
        out[i] = static_cast<int32_t>(ids[i]);
    }
    return out;
}

// Lossless for any bytes: invalid UTF-8 survives as surrogates (encode with "surrogateescape").
py::str to_str(const char* p, size_t n) {
    PyObject* o = PyUnicode_DecodeUTF8(p, static_cast<Py_ssize_t>(n), "surrogateescape");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

template <class T>
py::array numeric_array(const GgufFile& f, const GgufKV& kv) {
    py::array_t<T> a(static_cast<py::ssize_t>(kv.count));
    if (kv.count) std::memcpy(a.mutable_data(), f.raw_value(kv), kv.count * sizeof(T));
    return std::move(a);
}

py::object scalar_value(const GgufFile& f, const GgufKV& kv) {
    const uint8_t* p = f.raw_value(kv);
    auto get = [p](auto v) { std::memcpy(&v, p, sizeof v); return v; };
    switch (kv.type) {
        case GgufType::U8: return py::int_(get(uint8_t{}));
        case GgufType::I8: return py::int_(get(int8_t{}));
        case GgufType::U16: return py::int_(get(uint16_t{}));
        case GgufType::I16: return py::int_(get(int16_t{}));
        case GgufType::U32: return py::int_(get(uint32_t{}));
        case GgufType::I32: return py::int_(get(int32_t{}));
        case GgufType::U64: return py::int_(get(uint64_t{}));
        case GgufType::I64: return py::int_(get(int64_t{}));
        case GgufType::F32: return py::float_(get(float{}));
        case GgufType::F64: return py::float_(get(double{}));
        case GgufType::BOOL: return py::bool_(get(uint8_t{}) != 0);
        case GgufType::STRING: {
            const std::string s = f.string_value(kv);
            return to_str(s.data(), s.size());
        }
        default: throw std::runtime_error("unexpected metadata type");
    }
}

py::object metadata_value(const GgufFile& f, const GgufKV& kv) {
    if (kv.type != GgufType::ARRAY) return scalar_value(f, kv);
    switch (kv.elem_type) {
        case GgufType::U8:  // blobs such as bllama.tokenizer.sp_model
            return py::bytes(reinterpret_cast<const char*>(f.raw_value(kv)), static_cast<size_t>(kv.count));
        case GgufType::I8: return numeric_array<int8_t>(f, kv);
        case GgufType::U16: return numeric_array<uint16_t>(f, kv);
        case GgufType::I16: return numeric_array<int16_t>(f, kv);
        case GgufType::U32: return numeric_array<uint32_t>(f, kv);
        case GgufType::I32: return numeric_array<int32_t>(f, kv);
        case GgufType::U64: return numeric_array<uint64_t>(f, kv);
        case GgufType::I64: return numeric_array<int64_t>(f, kv);
        case GgufType::F32: return numeric_array<float>(f, kv);
        case GgufType::F64: return numeric_array<double>(f, kv);
        case GgufType::BOOL: return numeric_array<bool>(f, kv);
        case GgufType::STRING: {
            py::list out(static_cast<size_t>(kv.count));
            const uint8_t* p = f.raw_value(kv);
            for (uint64_t i = 0; i < kv.count; ++i) {  // lengths were validated at open
                uint64_t len;
                std::memcpy(&len, p, 8);
                out[static_cast<size_t>(i)] = to_str(reinterpret_cast<const char*>(p + 8), static_cast<size_t>(len));
                p += 8 + len;
            }
            return std::move(out);
        }
        default: throw std::runtime_error("unexpected metadata array type");
    }
}

// Taking the GIL back while the interpreter finalizes ends a daemon thread with pthread_exit (CPython before 3.14),
// and its unwinding may not leave a noexcept destructor such as py::gil_scoped_release's: a script that exited with a
// generate() running in a daemon thread aborted ("terminate called without an active exception"). So the GIL is
// released and taken back here, where that unwinding can pass, and a thread that is being ended does not try again
// on the way out.
thread_local bool t_thread_ending = false;

template <class F>
auto take_gil(F take) {
#if defined(__GLIBCXX__)
    try {
        return take();
    } catch (abi::__forced_unwind&) {  // pthread_exit: let it end the thread
        t_thread_ending = true;
        throw;
    }
#else
    return take();
#endif
}

// At interpreter exit (an atexit hook, before finalization: shutdown_calls) running calls stop at their next token
// and new ones are refused, and the hook waits a little for calls still in the engine, so that as few as possible are
// left to take the GIL back during finalization; those that are still there end through take_gil.
constexpr const char* kExiting = "the Python interpreter is exiting: engine calls are stopped";
constexpr double kExitWaitSeconds = 2.0;  // a step (a prompt chunk, a token) takes far less
std::atomic<bool> g_exiting{false};
std::mutex g_calls_mu;
std::condition_variable g_calls_done;
int g_calls = 0;  // calls that released the GIL and have not taken it back

// py::gil_scoped_release that counts the call for the exit hook, refuses to start once it ran, and whose destructor
// lets a thread exit pass (and then leaves the GIL alone).
class ReleasedGil {
public:
    ReleasedGil() {
        {
            const std::lock_guard<std::mutex> lock(g_calls_mu);
            if (g_exiting.load()) throw std::runtime_error(kExiting);
            ++g_calls;
        }
        state_ = PyEval_SaveThread();
    }
    ReleasedGil(const ReleasedGil&) = delete;
    ReleasedGil& operator=(const ReleasedGil&) = delete;
    ~ReleasedGil() noexcept(false) {
        {
            const std::lock_guard<std::mutex> lock(g_calls_mu);
            if (--g_calls == 0) g_calls_done.notify_all();
        }
        if (!t_thread_ending) take_gil([this] { PyEval_RestoreThread(state_); });
    }

private:
    PyThreadState* state_ = nullptr;
};

// The exit hook: stops and refuses engine calls, then waits up to timeout_s for those in the engine to return.
void shutdown_calls(double timeout_s) {
    {
        const std::lock_guard<std::mutex> lock(g_calls_mu);
        g_exiting.store(true);
    }
    PyThreadState* state = PyEval_SaveThread();  // a call may need the GIL to reach its next token
    {
        std::unique_lock<std::mutex> lock(g_calls_mu);
        g_calls_done.wait_for(lock, std::chrono::duration<double>(timeout_s), [] { return g_calls == 0; });
    }
    PyEval_RestoreThread(state);
}

// py::gil_scoped_acquire for a callback from the engine; a thread ended while it waits unwinds through the engine.
class AcquiredGil {
public:
    AcquiredGil() : state_(take_gil([] { return PyGILState_Ensure(); })) {}
    AcquiredGil(const AcquiredGil&) = delete;
    AcquiredGil& operator=(const AcquiredGil&) = delete;
    ~AcquiredGil() { PyGILState_Release(state_); }

private:
    PyGILState_STATE state_;
};

// A Python token callback called from the engine (which runs without the GIL): takes the GIL, and keeps an
// exception in `error` for the caller to re-raise once generation returns; an exception ends generation.
template <class... Args>
bool call_python(const py::object& fn, std::exception_ptr& error, Args... args) {
    const AcquiredGil gil;
    if (error) return true;
    try {
        return py::bool_(fn(args...));
    }
#if defined(__GLIBCXX__)
    catch (abi::__forced_unwind&) {  // the thread was ended inside fn (take_gil says why)
        t_thread_ending = true;
        throw;
    }
#endif
    catch (...) {
        error = std::current_exception();
        return true;
    }
}

std::vector<int32_t> int32_stops(const std::vector<int64_t>& stop_ids) {
    std::vector<int32_t> stops;
    for (int64_t s : stop_ids)
        if (s >= INT32_MIN && s <= INT32_MAX) stops.push_back(static_cast<int32_t>(s));  // others can never match
    return stops;
}

SamplingParams sampling_params(float temperature, int top_k, float top_p, float repetition_penalty,
                               const py::int_& seed, bool do_sample) {
    SamplingParams p;
    p.do_sample = do_sample;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repetition_penalty = repetition_penalty;
    // A negative seed asks for a fresh random one; others are used modulo 2^64.
    const bool random_seed = seed < py::int_(0);
    p.seed = random_seed ? std::random_device{}() * 0x9E3779B97F4A7C15ull ^ std::random_device{}()
                         : static_cast<uint64_t>(PyLong_AsUnsignedLongLongMask(seed.ptr()));
    return p;
}

class PyEngine {
public:
    // path: str or any os.PathLike (bllama.assets.SHAKESPEARE_MODEL is a pathlib.Path).
    PyEngine(const std::filesystem::path& file, std::optional<int> threads, std::optional<int64_t> context_length,
             const std::string& kv_cache_dtype, const std::string& head, const std::string& device,
             int max_sequences, const std::string& tq1_layout) {
        const std::string path = file.string();
        LoadOptions o;
        o.tq1_layout = parse_tq1_layout(tq1_layout);
        if (max_sequences < 1 || max_sequences > 256)
            throw std::invalid_argument("max_sequences must be in [1, 256], got " + std::to_string(max_sequences));
        o.sequences = max_sequences;
        if (device == "cuda") o.device = Device::Cuda;
        else if (device != "cpu") throw std::invalid_argument("device must be 'cpu' or 'cuda', got '" + device + "'");
        o.head = parse_head_type(head);
        o.kv_f16 = kv_cache_dtype == "float16";
        if (!o.kv_f16 && kv_cache_dtype != "float32")
            throw std::invalid_argument("kv_cache_dtype must be 'float32' or 'float16', got '" + kv_cache_dtype + "'");
        if (threads) {
            if (*threads <= 0) throw std::invalid_argument("threads must be a positive integer or None, got " + std::to_string(*threads));
            o.threads = *threads;
        }
        if (context_length) {
            if (*context_length <= 0)
                throw std::invalid_argument("context_length must be positive or None, got " + std::to_string(*context_length));
            o.max_context = *context_length;
        }
        bool out_of_memory = false;
        {
            const ReleasedGil nogil;
            try {
                engine_ = std::make_unique<Engine>(path, o);
            } catch (const std::bad_alloc&) {
                out_of_memory = true;  // reported below, with the GIL, as a MemoryError that says what to change
            }
        }
        if (out_of_memory) {
            const std::string ctx = context_length ? "context_length=" + std::to_string(*context_length)
                                                   : "the file's context length";
            PyErr_SetString(PyExc_MemoryError,
                            ("not enough memory to load '" + path + "': its weights and a " + kv_cache_dtype +
                             " KV cache for " + ctx + " x " + std::to_string(max_sequences) +
                             " sequence(s) do not fit; pass a smaller context_length, kv_cache_dtype='float16' "
                             "or fewer max_sequences").c_str());
            throw py::error_already_set();
        }
    }

    py::dict config() const {
        const ModelConfig& c = engine_->config();
        py::dict d;
        d["vocab_size"] = c.vocab;
        d["hidden_size"] = c.dim;
        d["num_layers"] = c.n_layers;
        d["num_heads"] = c.n_heads;
        d["num_kv_heads"] = c.n_kv_heads;
        d["head_dim"] = c.head_dim;
        d["ffn_size"] = c.ffn;
        d["seq_len"] = c.context;
        d["context_length"] = engine_->context_length();
        d["rms_eps"] = c.rms_eps;
        d["rope_theta"] = c.rope_theta;
        d["activation"] = activation_name(c.activation);
        d["tie_embeddings"] = c.tied;
        d["sub_norms"] = c.sub_norms;
        d["qk_norm"] = c.qk_norm;
        d["qkv_bias"] = c.qkv_bias;
        d["weight_type"] = ggml_type_name(c.weight_type);
        const BackendInfo info = engine_->info();
        d["device"] = info.device;
        d["device_name"] = info.device_name;
        d["kernel"] = info.kernel;
        d["threads"] = info.threads;
        d["weight_bytes"] = info.weight_bytes;
        d["kv_cache_dtype"] = info.kv_f16 ? "float16" : "float32";
        d["head"] = info.head;
        d["head_bytes"] = info.head_bytes;
        d["max_sequences"] = engine_->max_sequences();
        return d;
    }

    py::list generate(const std::vector<int64_t>& ids, int64_t max_new_tokens, float temperature, int top_k, float top_p,
                      float repetition_penalty, const py::int_& seed, bool do_sample,
                      const std::vector<int64_t>& stop_ids, const py::object& callback) {
        const int64_t V = engine_->vocab_size();
        const std::vector<int32_t> prompt = to_ids(ids, V, "prompt");
        const std::vector<int32_t> stops = int32_stops(stop_ids);
        const SamplingParams p = sampling_params(temperature, top_k, top_p, repetition_penalty, seed, do_sample);

        std::exception_ptr callback_error;
        const bool python_cb = !callback.is_none();
        const TokenCallback cb = [&](int32_t token) {
            return g_exiting.load() || (python_cb && call_python(callback, callback_error, token));
        };
        std::vector<int32_t> out;
        {
            const ReleasedGil nogil;
            const Turn turn(*this);
            out = engine_->generate(prompt, max_new_tokens, p, stops, cb);
        }
        if (callback_error) std::rethrow_exception(callback_error);
        if (g_exiting.load()) throw std::runtime_error(kExiting);  // not a shortened answer passed off as whole
        py::list result(out.size());
        for (size_t i = 0; i < out.size(); ++i) result[i] = out[i];
        return result;
    }

    py::list generate_batch(const std::vector<std::vector<int64_t>>& prompts, int64_t max_new_tokens,
                            float temperature, int top_k, float top_p, float repetition_penalty, const py::int_& seed,
                            bool do_sample, const std::vector<int64_t>& stop_ids, const py::object& callback) {
        const int64_t V = engine_->vocab_size();
        std::vector<std::vector<int32_t>> ps;
        for (const auto& p : prompts) ps.push_back(to_ids(p, V, "prompt"));
        const SamplingParams p = sampling_params(temperature, top_k, top_p, repetition_penalty, seed, do_sample);
        std::exception_ptr callback_error;
        const bool python_cb = !callback.is_none();
        // After an exception (or at exit) every sequence ends at its next token.
        const BatchTokenCallback cb = [&](int sequence, int32_t token) {
            return g_exiting.load() || (python_cb && call_python(callback, callback_error, sequence, token));
        };
        std::vector<std::vector<int32_t>> out;
        {
            const ReleasedGil nogil;
            const Turn turn(*this);
            out = engine_->generate_batch(ps, max_new_tokens, p, int32_stops(stop_ids), cb);
        }
        if (callback_error) std::rethrow_exception(callback_error);
        if (g_exiting.load()) throw std::runtime_error(kExiting);
        py::list result;
        for (const auto& o : out) result.append(py::cast(o));
        return result;
    }

    py::array_t<float> logits(const std::vector<int64_t>& ids) {
        const int64_t V = engine_->vocab_size();
        const std::vector<int32_t> toks = to_ids(ids, V, "ids");
        if (toks.empty()) throw std::invalid_argument("ids is empty");
        if (static_cast<int64_t>(toks.size()) > engine_->context_length())
            throw std::out_of_range(std::to_string(toks.size()) + " tokens exceed the context length " +
                                    std::to_string(engine_->context_length()));
        py::array_t<float> out({static_cast<py::ssize_t>(toks.size()), static_cast<py::ssize_t>(V)});
        float* dst = out.mutable_data();
        {
            const ReleasedGil nogil;
            const Turn turn(*this);
            engine_->logits(toks, dst);
        }
        return out;
    }

    // ---- continuous batching (engine/slots.h) ----
    int slot_add(const std::vector<int64_t>& ids, int64_t max_new_tokens, float temperature, int top_k, float top_p,
                 float repetition_penalty, const py::int_& seed, bool do_sample, const std::vector<int64_t>& stop_ids,
                 bool logprob, int top_logprobs) {
        SlotRequest req;
        req.prompt = to_ids(ids, engine_->vocab_size(), "prompt");
        req.max_new_tokens = max_new_tokens;
        req.params = sampling_params(temperature, top_k, top_p, repetition_penalty, seed, do_sample);
        req.stop_ids = int32_stops(stop_ids);
        req.logprob = logprob;
        req.top_logprobs = top_logprobs;
        const ReleasedGil nogil;
        const Turn turn(*this);
        return engine_->slots().add(std::move(req));
    }

    // [(slot, token or None, logprob or None, ((id, logprob), ...), finish or None, cached_tokens)]
    py::list slot_step() {
        std::vector<SlotEvent> events;
        {
            const ReleasedGil nogil;
            const Turn turn(*this);
            events = engine_->slots().step();
        }
        py::list out;
        for (const SlotEvent& e : events) {
            py::tuple top(e.logprobs.top.size());
            for (size_t i = 0; i < e.logprobs.top.size(); ++i)
                top[i] = py::make_tuple(e.logprobs.top[i].first, e.logprobs.top[i].second);
            const char* finish = finish_reason_name(e.finish);
            out.append(py::make_tuple(e.slot, e.token >= 0 ? py::object(py::int_(e.token)) : py::none(),
                                      e.has_logprob ? py::object(py::float_(e.logprobs.logprob)) : py::none(), top,
                                      *finish ? py::object(py::str(finish)) : py::none(), e.cached_tokens));
        }
        return out;
    }

    void slot_cancel(int slot) {
        const ReleasedGil nogil;
        const Turn turn(*this);
        engine_->slots().cancel(slot);
    }

    int64_t slot_step_tokens(int64_t n) {  // n > 0: set the step's token budget; returns the budget
        const ReleasedGil nogil;
        const Turn turn(*this);
        if (n > 0) engine_->slots().set_step_tokens(n);
        return engine_->slots().step_tokens();
    }

    int slot_active() {
        const ReleasedGil nogil;
        const Turn turn(*this);
        return engine_->slots_active();
    }

    py::dict last_stats() {
        GenerateStats s;
        {
            const ReleasedGil nogil;  // the call holding the turn may be waiting for the GIL in its callback
            const Turn turn(*this);
            s = engine_->last_stats();
        }
        py::dict d;
        d["prompt_tokens"] = s.prompt_tokens;
        d["cached_tokens"] = s.cached_tokens;
        d["prompt_seconds"] = s.prompt_seconds;
        d["decode_tokens"] = s.decode_tokens;
        d["decode_seconds"] = s.decode_seconds;
        d["generated_tokens"] = s.generated_tokens;
        d["load_seconds"] = s.load_seconds;
        d["prompt_tokens_per_second"] = s.prompt_seconds > 0 ? s.prompt_tokens / s.prompt_seconds : 0.0;
        d["decode_tokens_per_second"] = s.decode_seconds > 0 ? s.decode_tokens / s.decode_seconds : 0.0;
        d["stop_reason"] = stop_reason_name(s.stop_reason);
        return d;
    }

    py::object metadata(const std::string& key) const {
        const GgufFile& f = engine_->gguf();
        const GgufKV* kv = f.find(key);
        if (!kv) throw py::key_error("no metadata key '" + key + "'");
        return metadata_value(f, *kv);
    }

    py::list metadata_keys() const {
        py::list out;
        for (const GgufKV& kv : engine_->gguf().kvs()) out.append(kv.key);
        return out;
    }

    void reset() {
        const ReleasedGil nogil;
        const Turn turn(*this);
        engine_->reset();
    }

    int64_t vocab_size() const { return engine_->vocab_size(); }
    int64_t context_length() const { return engine_->context_length(); }

private:
    // The right to use the engine, held for one call: its buffers and KV cache are shared state. Take it only
    // with the GIL released.
    struct Turn {
        PyEngine& e;
        std::unique_lock<std::mutex> lock;
        explicit Turn(PyEngine& engine) : e(engine), lock(engine.mu_, std::defer_lock) {
            if (e.owner_.load() == std::this_thread::get_id())
                throw std::runtime_error("the engine is busy: this thread is already inside a call on it (a token "
                                         "callback may not call back into its own engine)");
            lock.lock();
            if (g_exiting.load()) throw std::runtime_error(kExiting);  // waited for the turn past the exit hook
            e.owner_.store(std::this_thread::get_id());
        }
        ~Turn() { e.owner_.store(std::thread::id()); }  // before `lock` unlocks
    };

    std::unique_ptr<Engine> engine_;
    std::mutex mu_;
    std::atomic<std::thread::id> owner_{};  // the thread holding mu_, for the re-entry check
};

}  // namespace

PYBIND11_MODULE(_engine, m) {
    m.doc() = "bLLaMa C++ inference engine (BitNet b1.58 ternary LLaMA, GGUF arch 'bitnet')";

    // Imported with the package, before bllama.serve registers its hooks, so those run first (atexit is last in,
    // first out): a server's engine thread is closed before its calls would be refused.
    py::module_::import("atexit").attr("register")(py::cpp_function([] { shutdown_calls(kExitWaitSeconds); }));

    m.def("read_bandwidth", [](int threads, size_t bytes, int repeats) {
            const ReleasedGil nogil;
            return bllama::measure_read_bandwidth(threads, bytes, repeats) / 1e9;
        }, py::arg("threads"), py::arg("bytes") = size_t(1) << 30, py::arg("repeats") = 5,
        "This machine's memory read bandwidth in GB/s with `threads` threads (best of `repeats`).");

    py::class_<Doorbell>(m, "Doorbell",
                         "A counter one thread rings and another waits on by spinning (engine/doorbell.h).")
        .def(py::init<>())
        .def("ring", &Doorbell::ring)
        .def("rings", &Doorbell::rings)
        .def("wait", [](const Doorbell& d, uint64_t seen, double timeout_s) {
                Doorbell::Wait w;
                {
                    const ReleasedGil nogil;
                    w = d.wait(seen, timeout_s);
                }
                return w == Doorbell::Wait::rang ? "rang" : w == Doorbell::Wait::timed_out ? "timed_out" : "preempted";
            }, py::arg("seen"), py::arg("timeout_s"),
            "Spins (the GIL released, no system call) until rings() != seen ('rang'), timeout_s passes ('timed_out') "
            "or the spin keeps losing its core to other threads ('preempted').");

    // Engine.slot_add when every slot is busy (bllama/runtime/slots.py raises its SlotsFullError from it).
    py::register_exception<SlotsFull>(m, "SlotsFull", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FileNotFound& e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        } catch (const FileError& e) {
            PyErr_SetString(PyExc_OSError, e.what());
        } catch (const GgufError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const ModelError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    m.def("gguf_tensors", [](const std::filesystem::path& file) {
            // The validating reader's view of a file's tensors (gguf-py's reader cannot name bitnet.cpp's I2_S).
            const GgufFile f = GgufFile::open(file.string());
            py::list out;
            for (const GgufTensor& t : f.tensors()) {
                py::dict d;
                d["name"] = t.name;
                d["type"] = ggml_type_name(t.type);
                d["dims"] = std::vector<int64_t>(t.dims, t.dims + t.n_dims);
                d["nbytes"] = t.nbytes;
                out.append(d);
            }
            return out;
        }, py::arg("path"), "[{name, type, dims (ggml order), nbytes}] of every tensor in a GGUF file.");

    m.def("check_model", [](const std::filesystem::path& file) {
            // What Engine() checks before it reads a weight (the config and every tensor's name, type and shape),
            // without loading: for readers of a model file that are not the engine (hf_load.load_gguf).
            const GgufFile f = GgufFile::open(file.string());
            try {
                check_model_tensors(f, read_config(f));
            } catch (const ModelError& e) {
                throw ModelError("'" + file.string() + "': " + e.what());
            }
        }, py::arg("path"), "Raises ValueError naming what the engine would refuse in the model file at `path`.");

    m.def("cuda_compiled", &bllama::cuda_compiled, "True when this build has the CUDA backend.");
    m.def("cuda_device_count", &bllama::cuda_device_count, "CUDA devices visible (0 without a driver or GPU).");
    m.def("cuda_device_description", &bllama::cuda_device_description,
          "The GPU's name and size, or why there is none.");

    py::class_<PyEngine>(m, "Engine")
        .def(py::init<const std::filesystem::path&, std::optional<int>, std::optional<int64_t>, const std::string&,
                      const std::string&, const std::string&, int, const std::string&>(),
             py::arg("path"), py::arg("threads") = py::none(), py::arg("context_length") = py::none(),
             py::arg("kv_cache_dtype") = "float16", py::arg("head") = "q4", py::arg("device") = "cpu",
             py::arg("max_sequences") = 1, py::arg("tq1_layout") = "auto",
             "Load a GGUF 'bitnet' model. threads=None: the physical cores this process may use. "
             "context_length=None: the file's; a smaller value caps the KV cache. kv_cache_dtype='float16' "
             "(default) halves the cache (exact model function: 'float32'). head='q4' (default) requantizes the "
             "LM head to 4 bits with an f16 scale per 32 columns at load (0.28x the f16 head's bytes per token); "
             "'q8' to int8 with per-row scales; 'f16' runs the file's head as is. device='cuda' runs on the GPU (csrc/cuda): weights stay packed there; "
             "max_sequences > 1 keeps a KV cache for that many sequences (CPU: at most 64), decoded together by "
             "generate_batch. tq1_layout: TQ1_0 files on the CPU: 'auto' (default) keeps them at 1.6 bits where that "
             "decodes faster (the AVX-512 VNNI kernels on a CPU with VBMI) and repacks them to 2 bits elsewhere, "
             "'2bit' always repacks, 'base3' always keeps 1.6 bits (docs/engine.md, \"Files\", kernels/pack).")
        .def_property_readonly("config", &PyEngine::config)
        .def_property_readonly("vocab_size", &PyEngine::vocab_size)
        .def_property_readonly("context_length", &PyEngine::context_length)
        .def_property_readonly("last_stats", &PyEngine::last_stats)
        .def("generate", &PyEngine::generate, py::arg("ids"), py::arg("max_new_tokens"), py::arg("temperature") = 1.0f,
             py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("repetition_penalty") = 1.0f,
             py::arg("seed") = py::int_(0), py::arg("do_sample") = false, py::arg("stop_ids") = std::vector<int64_t>{},
             py::arg("callback") = py::none(),
             "Generated token ids (stop token excluded). callback(token) -> truthy stops; its exceptions propagate.")
        .def("generate_batch", &PyEngine::generate_batch, py::arg("prompts"), py::arg("max_new_tokens"),
             py::arg("temperature") = 1.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
             py::arg("repetition_penalty") = 1.0f, py::arg("seed") = py::int_(0), py::arg("do_sample") = false,
             py::arg("stop_ids") = std::vector<int64_t>{}, py::arg("callback") = py::none(),
             "A list of generated id lists, one per prompt. Up to max_sequences prompts decode together; prompt i "
             "samples with seed + i (what generate(prompts[i], seed=seed + i) returns). callback(i, token) runs "
             "for every returned token of prompt i; truthy ends that sequence; an exception ends all and propagates.")
        .def("logits", &PyEngine::logits, py::arg("ids"), "float32 array [len(ids), vocab]")
        .def("slot_add", &PyEngine::slot_add, py::arg("ids"), py::arg("max_new_tokens"), py::arg("temperature") = 1.0f,
             py::arg("top_k") = 0, py::arg("top_p") = 1.0f, py::arg("repetition_penalty") = 1.0f,
             py::arg("seed") = py::int_(0), py::arg("do_sample") = false, py::arg("stop_ids") = std::vector<int64_t>{},
             py::arg("logprob") = false, py::arg("top_logprobs") = 0,
             "Continuous batching: puts a request in a free slot (longest kept prefix, else least recently used) and "
             "returns the slot; SlotsFull when none is free. Runs nothing.")
        .def("slot_step", &PyEngine::slot_step,
             "One step of every running slot plus prompt rows of joining ones (the step's token budget): a list of (slot, token|None, "
             "logprob|None, ((id, logprob), ...), 'length'|'stop'|None, cached_tokens).")
        .def("slot_cancel", &PyEngine::slot_cancel, py::arg("slot"), "Retires a slot now (its KV cache is kept).")
        .def("slot_active", &PyEngine::slot_active, "Slots taken.")
        .def("slot_step_tokens", &PyEngine::slot_step_tokens, py::arg("n") = 0,
             "Tokens a step runs (decode rows, then joining prompts' rows); n > 0 sets it. Returns it.")
        .def("metadata", &PyEngine::metadata, py::arg("key"))
        .def("metadata_keys", &PyEngine::metadata_keys)
        .def("reset", &PyEngine::reset)
        .def("__repr__", [](const PyEngine& e) {
            return "<bllama._engine.Engine vocab=" + std::to_string(e.vocab_size()) +
                   " context=" + std::to_string(e.context_length()) + ">";
        });
}
