#include "engine/env_options.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace bllama {

std::optional<bool> parse_switch(const char* text) {
    std::string t;
    for (const char* p = text; *p; ++p) t += static_cast<char>(std::tolower(static_cast<unsigned char>(*p)));
    if (t == "1" || t == "on" || t == "true" || t == "yes") return true;
    if (t == "0" || t == "off" || t == "false" || t == "no") return false;
    return std::nullopt;
}

std::optional<long> parse_count(const char* text, long max) {
    if (!std::isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;  // no sign, no space, not empty
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v > max) return std::nullopt;
    return v;
}

std::optional<bool> env_switch(const char* name) {
    const char* e = std::getenv(name);
    if (!e) return std::nullopt;
    const std::optional<bool> v = parse_switch(e);
    if (!v) std::fprintf(stderr, "bllama: %s=%s not recognised (1/0, on/off, true/false, yes/no): ignored\n", name, e);
    return v;
}

std::optional<long> env_count(const char* name, long max) {
    const char* e = std::getenv(name);
    if (!e) return std::nullopt;
    const std::optional<long> v = parse_count(e, max);
    if (!v) std::fprintf(stderr, "bllama: %s=%s is not a whole number in [0, %ld]: ignored\n", name, e, max);
    return v;
}

}  // namespace bllama
