# Writes OUT: every file of DIR (not its subdirectories) as a C string, in name order, in an
# array NAME[] of { name, content } and NAME_count — for what the binary writes out itself
# (`tide init`'s skeleton).
file(GLOB files LIST_DIRECTORIES false "${DIR}/*")
list(SORT files)
set(body "/* generated from ${DIR} by cmake/embed_files.cmake; do not edit */\n#include <stddef.h>\n")
set(table "")
set(i 0)
foreach(f IN LISTS files)
  get_filename_component(base "${f}" NAME)
  if(base MATCHES "^\\.|~$") # an editor's backup or swap file
    continue()
  endif()
  file(READ "${f}" hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  string(APPEND body "static const char f${i}[] = {${hex}0x00};\n")
  string(APPEND table "\t{\"${base}\", f${i}},\n")
  math(EXPR i "${i} + 1")
endforeach()
string(APPEND body "const struct { const char *name; const char *content; } ${NAME}[] = {\n${table}};\n")
string(APPEND body "const size_t ${NAME}_count = ${i};\n")
file(WRITE "${OUT}.tmp" "${body}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
